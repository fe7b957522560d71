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
#: The TLS drop-ins, shipped as documentation (see tcpchat.service).
DROPINS = ("tls-credential.conf", "tls-copy.conf")


def read(path):
    return path.read_text(encoding="utf-8")


def package_version():
    return re.search(r'^__version__ = "([^"]+)"', read(ROOT / "tcpchat" / "__init__.py"), re.M).group(1)


def spec_field(name):
    match = re.search(r"^%s:\s*(\S.*?)\s*$" % name, read(PACKAGING / "tcpchat.spec"), re.M)
    assert match, "no %s: in the spec" % name
    return match.group(1)


def unit_settings(name="tcpchat.service"):
    """[(section, key, value)] of a unit file (or drop-in), in order."""
    settings = []
    section = None
    for line in read(PACKAGING / name).splitlines():
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


@pytest.mark.parametrize("dropin", [None] + list(DROPINS))
def test_unit_passes_systemd_analyze_verify(tmp_path, dropin):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    if dropin is not None:
        # Where the documentation says to put it; verify reads drop-ins
        # next to the unit it is given.
        (tmp_path / "tcpchat.service.d").mkdir()
        shutil.copy2(str(PACKAGING / dropin), str(tmp_path / "tcpchat.service.d" / "tls.conf"))
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


# -- TLS: the drop-ins that let the dynamic user read a root-only key --------

#: Directives systemd 239 (Oracle Linux 8) does not know, with the version
#: that brought them: on 239 they only make warnings.
NEWER_THAN_239 = {
    "LoadCredential": 247, "LoadCredentialEncrypted": 250, "SetCredential": 247,
    "SetCredentialEncrypted": 250, "ImportCredential": 254, "ProtectClock": 247,
    "ProtectKernelLogs": 244, "ProtectHostname": 242, "ProtectProc": 247,
    "ProcSubset": 247, "RestrictFileSystems": 250, "RestrictSUIDSGID": 242,
}


def test_unit_reloads_with_sighup():
    # systemctl reload: the server reopens its log and rereads the certificate.
    assert service_value("ExecReload") == "/bin/kill -HUP $MAINPID"


def test_only_the_credential_dropin_needs_a_systemd_newer_than_239():
    for name in ("tcpchat.service", "tls-copy.conf"):
        newer = {k for _, k, _ in unit_settings(name)} & set(NEWER_THAN_239)
        assert not newer, (name, newer)
    newer = {k for _, k, _ in unit_settings("tls-credential.conf")} & set(NEWER_THAN_239)
    assert newer == {"LoadCredential"}


def test_dropins_hand_the_server_the_names_the_options_file_gives():
    # Both make tls.crt and tls.key appear in $CREDENTIALS_DIRECTORY, where
    # the server looks up the relative names of the sysconfig example.
    loaded = [v for s, k, v in unit_settings("tls-credential.conf") if k == "LoadCredential"]
    assert sorted(v.split(":", 1)[0] for v in loaded) == ["tls.crt", "tls.key"]
    sources = sorted(v.split(":", 1)[1] for v in loaded)
    assert sources == ["/etc/pki/tcpchat/tls.crt", "/etc/pki/tcpchat/tls.key"]
    copy = unit_settings("tls-copy.conf")
    assert ("Service", "RuntimeDirectory", "tcpchat") in copy
    assert ("Service", "Environment", "CREDENTIALS_DIRECTORY=/run/tcpchat") in copy
    start = [v for _, k, v in copy if k == "ExecStartPre"]
    assert len(start) == 1 and start[0].startswith("+")  # root, outside the sandbox
    for path in sources:
        assert path in start[0]
    for name in ("tls.crt", "tls.key"):
        assert "/run/tcpchat/" + name in start[0]
    reload = [v for _, k, v in copy if k == "ExecReload"]
    # Reset, copy again as root, then SIGHUP as the service.
    assert reload[0] == "" and reload[1].startswith("+") and reload[-1] == \
        "/bin/kill -HUP $MAINPID"
    sysconfig = read(PACKAGING / "tcpchat.sysconfig")
    for path in sources:
        assert path in sysconfig
    for name in DROPINS:
        assert name in sysconfig and name in read(PACKAGING / "tcpchat.service")


def test_sysconfig_shows_how_to_turn_tls_on():
    try:
        from tcpchat.server import make_parser
    except ModuleNotFoundError as e:
        if e.name != "tcpchat.server":
            raise
        pytest.skip("tcpchat.server does not exist on this branch yet")
    text = read(PACKAGING / "tcpchat.sysconfig")
    example = re.search(r"^#\s+(--tls-cert \S+ --tls-key \S+)$", text, re.M)
    assert example, "the options file shows no --tls-cert ... --tls-key ... line"
    args = make_parser().parse_args(sysconfig_options() + example.group(1).split()
                                    + ["--tls-only"])
    assert (args.tls_cert, args.tls_key, args.tls_only) == ("tls.crt", "tls.key", True)
    assert str(args.tls_port) in text  # the port to open is named


def test_spec_ships_the_dropins_as_documentation():
    spec = read(PACKAGING / "tcpchat.spec")
    line = re.search(r"^%doc packaging/tls-.*$", spec, re.M)
    assert line, "the spec does not ship the TLS drop-ins"
    assert sorted(line.group(0).split()[1:]) == sorted("packaging/" + d for d in DROPINS)
    if (ROOT / ".ci" / "rpm").exists():  # not in the sdist the RPM builds from
        rpm_check = read(ROOT / ".ci" / "rpm")
        for name in DROPINS:
            assert name.replace(".", "\\.") in rpm_check
