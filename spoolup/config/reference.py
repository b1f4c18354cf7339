"""Documentation generated from the option table: the README's option reference and
contrib/spoolup.toml.example (tests/test_docs.py keeps both equal to these)."""

from __future__ import annotations

from spoolup.config.options import OPTIONS, REQUIRED, SIZE_OPTIONS, Option
from spoolup.config.values import format_size, toml_value


def _shown_default(opt: Option) -> str:
    if opt.default is REQUIRED:
        return "*required*"
    if opt.name == "object-key":
        return '`"{path}"` / `"{key}"`'
    if opt.name in SIZE_OPTIONS:
        return f'`"{format_size(opt.default)}"`'
    return f"`{toml_value(opt.default)}`"


def reference_table() -> str:
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for opt in OPTIONS:
        origin = " (s3())" if opt.group == "s3()" else ""
        rows.append(f"| `{opt.name}`{origin} | {_shown_default(opt)} | {opt.help.replace('|', '/')} |")
    return "\n".join(rows)


def example_toml() -> str:
    out = [
        "# spoolup configuration: every option with its default.",
        "# Flat keys named as syslog-ng's s3() options; sizes take bytes or units (\"5MiB\");",
        "# durations are minutes (fractional allowed) or strings such as \"30s\", \"2h\".",
        "# Generated from spoolup/config/options.py (tests/test_docs.py keeps it in sync).",
        "",
    ]
    for opt in OPTIONS:
        out.append(f"# {opt.help}")
        if opt.default is REQUIRED:
            example = {"bucket": '"my-logs"', "spool-dir": '"/var/spool/spoolup"',
                       "state-dir": '"/var/lib/spoolup"'}[opt.name]
            out.append(f"{opt.name} = {example}")
        elif opt.name == "object-key":
            out.append('#object-key = "{path}"')
        elif opt.name in SIZE_OPTIONS:
            out.append(f'#{opt.name} = "{format_size(opt.default)}"')
        else:
            out.append(f"#{opt.name} = {toml_value(opt.default)}")
        out.append("")
    return "\n".join(out)
