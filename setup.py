"""Packaging for tcpchat. The version lives in tcpchat/__init__.py only."""

import glob
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    # Parsed, not imported: importing the package at build time would tie
    # the build to the interpreter that runs it.
    with open(os.path.join(HERE, "tcpchat", "__init__.py"), encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def read_readme():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


def man_pages(section):
    # Relative paths: setuptools wants data files relative to setup.py.
    return sorted(glob.glob(os.path.join("man", "*.%d" % section)))


setup(
    name="tcpchat",
    version=read_version(),
    description="A console chat over TCP: a selectors server and a readline client",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    python_requires=">=3.9",
    packages=find_packages(include=["tcpchat", "tcpchat.*"]),
    install_requires=[],
    # trustme makes the TLS tests' certificates (tests/tlshelp.py).
    extras_require={"test": ["pytest>=7", "trustme>=1.0"]},
    entry_points={
        "console_scripts": [
            "tcpchat-server = tcpchat.server:main",
            "tcpchat-client = tcpchat.client:main",
        ],
    },
    data_files=[
        ("share/man/man1", man_pages(1)),
        ("share/man/man7", man_pages(7)),
    ],
    classifiers=[
        "Environment :: Console",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Communications :: Chat",
    ],
)
