"""The README's option table and contrib/spoolup.toml.example come from the option table in spoolup/config/options.py."""

from pathlib import Path

from spoolup import config

ROOT = Path(__file__).resolve().parent.parent


def test_readme_option_table_is_current():
    text = (ROOT / "README.md").read_text()
    begin = text.index("<!-- BEGIN OPTIONS")
    begin = text.index("\n", begin) + 1
    end = text.index("<!-- END OPTIONS -->")
    assert text[begin:end].strip() == config.reference_table().strip(), (
        "README.md's option table is stale: regenerate it from spoolup.config.reference_table()"
    )


def test_example_config_is_current_and_loads(tmp_path):
    example = (ROOT / "contrib" / "spoolup.toml.example").read_text()
    assert example == config.example_toml()
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(example.replace("/var/spool/spoolup", str(tmp_path / "spool"))
                        .replace("/var/lib/spoolup", str(tmp_path / "state")))
    cfg = config.load(cfg_path)
    for opt in config.OPTIONS:
        if opt.default is not config.REQUIRED and opt.name != "object-key":
            assert cfg.value(opt.name) == opt.default, opt.name


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "bash tests/setup.sh && python -m pytest -n 3"
    assert f"```sh\n{command}\n```" in readme.split("Run the tests", 1)[1]
    assert command in ci.splitlines()
    setup = (ROOT / "tests" / "setup.sh").read_text()
    for package in ("syslog-ng-core", "strace", "ceph-mon", "ceph-osd", "ceph-mgr", "radosgw", "ceph-common",
                    "'.[test]'"):
        assert package in setup, package
    # the versions CI tested (issue 18 item 5), and a documented way to test the newest releases
    assert "pip install -c constraints.txt '.[test]'" in setup
    assert "SPOOLUP_NEWEST" in setup and "pip install -U '.[test]'" in setup
    assert "SPOOLUP_NEWEST=1 bash tests/setup.sh" in readme
    assert "pip install -c constraints.txt '.[demo]' && spoolup demo" in readme


def test_constraints_pin_every_declared_dependency():
    """constraints.txt holds the versions CI tested: every requirement of the package and of its
    test, demo and bench extras is pinned there (==), to a version its specifier accepts."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version and " " not in version, f"not pinned: {line!r}"
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in ("test", "demo", "bench"):
        declared += project["optional-dependencies"][extra]
    for text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (text, pins[name])
    tox = (ROOT / "tox.ini").read_text()
    assert "-c {toxinidir}/constraints.txt" in tox and "[testenv:newest]" in tox


def test_readme_minimal_config_says_when_objects_appear():
    """Issue 14, item 4: with the minimal config the bucket stayed empty for an hour, unexplained."""
    readme = (ROOT / "README.md").read_text()
    after = readme[readme.index("A minimal configuration:"):]
    after = after[after.index("```", after.index("```toml") + 3):][:800]
    assert "`flush-grace-period`" in after and "60 minutes by default" in after
    assert "`spoolup status`" in after and "when it" in after and "completes" in after
