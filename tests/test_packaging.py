"""The Oracle Linux packaging files agree with the code and with each other.

The RPM itself is built by .ci/rpm (rpmbuild is slow and not everywhere);
these are the quick checks that need no rpmbuild, so they also run in the
RPM's own %check.
"""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"


def read(path):
    return path.read_text(encoding="utf-8")


def package_version():
    return re.search(r'^__version__ = "([^"]+)"', read(ROOT / "tcpchat" / "__init__.py"), re.M).group(1)


def spec_field(name):
    match = re.search(r"^%s:\s*(\S.*?)\s*$" % name, read(PACKAGING / "tcpchat.spec"), re.M)
    assert match, "no %s: in the spec" % name
    return match.group(1)


def unit_settings():
    """[(section, key, value)] of the unit file, in order."""
    settings = []
    section = None
    for line in read(PACKAGING / "tcpchat.service").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.append((section, key.strip(), value.strip()))
    return settings


def service_value(key):
    values = [v for s, k, v in unit_settings() if s == "Service" and k == key]
    assert values, "tcpchat.service sets no %s=" % key
    return values[-1]


def sysconfig_options():
    text = read(PACKAGING / "tcpchat.sysconfig")
    match = re.search(r'^TCPCHAT_OPTIONS="([^"]*)"$', text, re.M)
    assert match, "the sysconfig file does not set TCPCHAT_OPTIONS"
    return shlex.split(match.group(1))


def test_spec_version_is_the_package_version():
    # Version lives in tcpchat/__init__.py; the spec cannot import it.
    assert spec_field("Version") == package_version()


def test_spec_builds_from_the_sdist_name():
    assert spec_field("Source0") == "%{name}-%{version}.tar.gz"
    assert spec_field("Name") == "tcpchat"
    assert spec_field("BuildArch") == "noarch"


def test_spec_installs_every_man_page_and_both_commands():
    spec = read(PACKAGING / "tcpchat.spec")
    for page in sorted((ROOT / "man").iterdir()):
        section = page.suffix.lstrip(".")
        assert "%%{_mandir}/man%s/%s*" % (section, page.name) in spec, page.name
    for command in ("tcpchat-server", "tcpchat-client"):
        assert "%%{_bindir}/%s\n" % command in spec
    assert "%{_unitdir}/tcpchat.service" in spec
    assert "%config(noreplace) %{_sysconfdir}/sysconfig/tcpchat" in spec


def test_sdist_carries_what_the_rpm_build_needs():
    manifest = read(ROOT / "MANIFEST.in").split("\n")
    for line in ("recursive-include tests *.py", "recursive-include packaging *",
                 "recursive-include man *.1 *.7"):
        assert line in manifest


@pytest.mark.parametrize(
    "key, value",
    [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("Restart", "on-failure"),
        ("EnvironmentFile", "-/etc/sysconfig/tcpchat"),
        ("SyslogIdentifier", "tcpchat-server"),
    ],
)
def test_unit_is_hardened_and_configured(key, value):
    assert service_value(key) == value


def test_unit_runs_the_server_with_the_sysconfig_options():
    assert service_value("ExecStart") == "/usr/bin/tcpchat-server $TCPCHAT_OPTIONS"
    setup = read(ROOT / "setup.py")
    assert re.search(r'"tcpchat-server = tcpchat\.server:main"', setup)


def test_unit_leaves_room_for_the_default_client_limit():
    # One descriptor per client plus the listener, syslog and log file.
    assert int(service_value("LimitNOFILE")) > 10000 + 16


def test_sysconfig_options_are_accepted_by_the_server():
    try:
        from tcpchat.server import make_parser
    except ModuleNotFoundError as e:
        if e.name != "tcpchat.server":
            raise
        pytest.skip("tcpchat.server does not exist on this branch yet")
    args = make_parser().parse_args(sysconfig_options())
    # The service's default is the server's default address: local only.
    assert args.host == "127.0.0.1"


def test_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants ExecStart to be an executable and the Documentation=
    # pages to be found by man: point both at what this tree has.
    unit = read(PACKAGING / "tcpchat.service").replace(
        "ExecStart=/usr/bin/tcpchat-server", "ExecStart=%s -m tcpchat.server" % sys.executable
    )
    (tmp_path / "tcpchat.service").write_text(unit, encoding="utf-8")
    manpath = tmp_path / "man"
    for page in (ROOT / "man").iterdir():
        section_dir = manpath / ("man" + page.suffix.lstrip("."))
        section_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(str(page), str(section_dir / page.name))
    has_man = shutil.which("man") is not None
    env = {"PATH": "/usr/bin:/bin", "MANPATH": str(manpath)}
    cmd = ["systemd-analyze", "verify"]
    if not has_man:
        cmd.append("--man=no")
    result = subprocess.run(
        cmd + [str(tmp_path / "tcpchat.service")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == "", result.stdout


def test_restarts_keep_sessions_in_the_state_directory():
    # systemctl restart loses nothing: the state file is in the unit's
    # StateDirectory, the one place besides the logs it may write.
    assert service_value("StateDirectory") == "tcpchat"
    from tcpchat.server import make_parser

    args = make_parser().parse_args(sysconfig_options())
    assert args.state_file == "/var/lib/tcpchat/state"
    assert args.resume_time > 0
