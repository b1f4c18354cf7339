"""Command line: parses, dispatches, and maps failures to exit codes.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from spoolup import __version__

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = "/etc/spoolup/spoolup.toml"
CONFIG_ENV = "SPOOLUP_CONFIG"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: exit 2, as documented
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"spoolup: error: {message}{self._did_you_mean(message)}\n")

    def _option_strings(self) -> set[str]:
        names = set(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    names |= set(sub._option_string_actions)
        return names

    def _did_you_mean(self, message: str) -> str:
        import difflib

        if not message.startswith("unrecognized arguments: "):
            return ""
        known = sorted(self._option_strings())
        hints = []
        for arg in message.split(": ", 1)[1].split():
            if arg.startswith("--"):
                close = difflib.get_close_matches(arg.split("=")[0], known, n=1, cutoff=0.6)
                if close:
                    hints.append(f"{arg}: did you mean {close[0]}?")
        return ("\n" + "\n".join(f"spoolup: {h}" for h in hints)) if hints else ""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="spoolup",
        description="Crash-safe shipper of syslog-ng spool files to S3, with the s3() destination's semantics.",
        epilog="Exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration. Docs: README.md, docs/operations.md",
    )
    p.add_argument("--version", action="version", version=f"spoolup {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--config", "-c", default=os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG, metavar="FILE",
                        help=f"spoolup TOML configuration file (default: ${CONFIG_ENV} if set, else {DEFAULT_CONFIG})")
        return sp

    with_config("run", "Run the service in the foreground (SIGTERM/SIGINT stop it cleanly).")
    d = with_config("drain", "Ship everything now in the spool: close all objects, upload, exit 0 when nothing is pending.")
    d.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                   help="give up (exit 1) after this many seconds; 0 waits as long as it takes (default)")
    s = with_config("status", "Show open objects, pending parts, backlog, oldest pending age, last error.")
    s.add_argument("--json", action="store_true", help="print the stable JSON form (docs/status.schema.json)")
    r = with_config("recover", "Reconcile journal, chunk files, spool offsets and the bucket after a crash.")
    r.add_argument("--dry-run", action="store_true", help="only report what would be done; change nothing anywhere")
    r.add_argument("--from-bucket", action="store_true",
                   help="rebuild a lost or deleted journal from the ledger in the bucket (all of this agent's "
                        "segments); run/drain then continue with the next records, exactly once")
    v = with_config("verify", "Audit delivery: every shipped object is in the bucket with the size and ETag its ledger "
                    "record gives, no spool byte is in two objects, no consumed byte is in none. Exit 0 when all "
                    "holds, 1 naming each object or range that does not (missing, overwritten, "
                    "record_without_object, unrecorded, checksum_mismatch, overlapping, gap, bad_segment). "
                    "Reads the journal read-only (works while `spoolup run` runs); costs the listing pages of the "
                    "object-key's prefix and one GET per ledger segment.")
    v.add_argument("--json", action="store_true", help="print the stable JSON report (docs/operations.md, "
                   "\"spoolup verify\")")
    cc = with_config("check-config", "Validate the configuration, print it (secrets masked), test bucket access.")
    cc.add_argument("--no-s3", action="store_true", help="do not contact S3")
    demo = sub.add_parser("demo", help="Run spoolup against an embedded local S3 (moto server) on a demo spool.",
                          description="Start a local S3 endpoint (moto server) on a free loopback port, write a "
                          "small demo spool, run `spoolup run` until the demo objects are complete, and list them.")
    demo.add_argument("--dir", metavar="DIR", help="work directory to use and keep (default: a temporary one, "
                      "removed afterwards)")
    return p


def _upload_parser() -> argparse.ArgumentParser:
    """`spoolup _upload`: the upload process, started by run/drain; internal, so not in --help."""
    up = _Parser(prog="spoolup _upload")
    up.add_argument("--config", required=True)
    up.add_argument("--parent-pid", type=int, required=True)
    return up


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_upload"]:
        from spoolup import upload

        args = _upload_parser().parse_args(argv[1:])
        return upload.main(args.config, args.parent_pid)
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a reader gone away is handled below
        return code
    except BrokenPipeError:
        # the reader went away (`spoolup status | head -1`): what it wanted it got; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "demo":
        from spoolup import demo

        return demo.main(args.dir)

    from spoolup import config as config_mod
    from spoolup import logs

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        print(f"spoolup: configuration error in {args.config}: {e}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(level=cfg.log_level, fmt=cfg.log_format, secrets=cfg.secrets, process=args.command,
               log_file=cfg.log_file or None)
    try:
        return COMMANDS[args.command](cfg, args)
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except config_mod.ConfigError as e:  # a change the state dir cannot take (spoolup/form.py)
        print(f"spoolup: configuration error in {args.config}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the last line of defence: a clear message, exit 1
        from spoolup.journal import JournalError
        from spoolup.lock import StateDirBusy
        from spoolup.s3 import S3Error
        from spoolup.service import RecoveryProblem

        if isinstance(e, BrokenPipeError):
            raise
        if isinstance(e, (JournalError, StateDirBusy, RecoveryProblem, S3Error, OSError)):
            print(f"spoolup: {logs.redact_text(str(e), cfg.secrets)}", file=sys.stderr)
            return EXIT_FAILURE
        logs.get().exception("unexpected failure")
        print(f"spoolup: unexpected failure: {logs.redact_text(repr(e), cfg.secrets)}", file=sys.stderr)
        return EXIT_FAILURE


# ---------------------------------------------------------------------------
# commands


def cmd_run(cfg, args) -> int:
    from spoolup import logs
    from spoolup.service import Service

    from spoolup import objectlock

    objectlock.check_at_start(cfg, logs.get("spoolup.ingest"))
    service = Service(cfg, logs.get("spoolup.ingest"))
    try:
        service.install_signals()  # first: a SIGTERM during start-up (recovery) is a clean stop too
        service.open()
        return service.run()
    finally:
        service.close()


def cmd_drain(cfg, args) -> int:
    from spoolup import lock, logs
    from spoolup.journal import Journal, ObjectState
    from spoolup.service import Service

    log = logs.get("spoolup.drain")
    if lock.is_held(cfg.state_dir):
        return _drain_via_service(cfg, args, log)
    from spoolup import objectlock

    objectlock.check_at_start(cfg, log)
    service = Service(cfg, log)
    try:
        service.install_signals()
        service.open()
        code = service.run(drain=True, drain_timeout=args.timeout)
    finally:
        service.close()
    if code == 0:
        j = Journal.open_readonly(cfg.journal_path)
        try:
            done = j.object_totals(ObjectState.DONE)[0]
        finally:
            j.close()
        print(f"drained: nothing pending ({done} objects completed in total)")
    return code


def _drain_via_service(cfg, args, log) -> int:
    """`spoolup run` holds the state dir: ask it to drain, and wait for it."""
    from spoolup.journal import REQUEST_REFUSED, Journal

    from spoolup.progress import DrainProgress, pending_bytes

    journal = Journal.open(cfg.journal_path, fsync=cfg.fsync, create=False, migrate=False)
    progress = DrainProgress(log)
    try:
        request = journal.add_request("drain")
        log.info("asked the running service to drain", request=request)
        deadline = time.monotonic() + args.timeout if args.timeout else None
        while True:
            row = journal.request(request)
            done = bool(row and row["done_at"])
            refused = done and str(row.get("result") or "").startswith(REQUEST_REFUSED)
            progress.update(0 if done and not refused else pending_bytes(journal), final=done)
            if refused:
                print("spoolup: drain cannot finish: S3 refuses requests what is left needs (retried only slowly); "
                      "nothing is lost: the running service ships it once S3 accepts them (grant what the error "
                      f"names); see spoolup status: {row['result'][len(REQUEST_REFUSED):]}", file=sys.stderr)
                return EXIT_FAILURE
            if done:
                print("drained by the running service: nothing pending")
                return EXIT_OK
            if deadline is not None and time.monotonic() > deadline:
                print("spoolup: drain timed out; the service is still draining", file=sys.stderr)
                return EXIT_FAILURE
            from spoolup import lock

            if not lock.is_held(cfg.state_dir):
                print("spoolup: the running service stopped before the drain finished; run drain again",
                      file=sys.stderr)
                return EXIT_FAILURE
            time.sleep(0.2)
    finally:
        if progress.shown:
            progress.stream.write("\n")
        journal.close()


def cmd_status(cfg, args) -> int:
    from spoolup import status

    st = status.collect(cfg)
    print(status.to_json(st) if args.json else status.render(st))
    return EXIT_OK


def cmd_recover(cfg, args) -> int:
    from spoolup import recover_cmd

    return recover_cmd.run(cfg, dry_run=args.dry_run, from_bucket=args.from_bucket)


def cmd_verify(cfg, args) -> int:
    from spoolup import verify

    return verify.run(cfg, as_json=args.json)


def cmd_check_config(cfg, args) -> int:
    from spoolup import config as config_mod

    print(f"# effective configuration from {cfg.source} (secrets masked; values as written, defaults as documented)")
    for name, text in cfg.as_written().items():
        print(f"{name} = {text}")
    if cfg.template:
        print("# note: 'template' is applied by syslog-ng's file() destination; spoolup copies records verbatim")
    from spoolup.scan import spool_dir_problem

    spool_problem = spool_dir_problem(cfg.spool_dir)
    for warning in ([spool_problem] if spool_problem else []) + config_mod.warnings(cfg):
        print(f"# warning: {warning}")
    if args.no_s3:
        return EXIT_OK
    from spoolup.s3 import S3, S3Error

    try:
        s3 = S3(cfg)
        if cfg.role:
            print(f"# credentials: {s3.identity()} (role assumed through STS)")
        else:  # where boto3 found them (botocore's name for the source), without fetching any
            from spoolup.connect import credential_source

            print(f"# credentials: {credential_source(s3.session)}"
                  + (f" (profile {cfg.profile})" if cfg.profile else ""))
        if s3.bucket_exists():
            print(f"# bucket {cfg.bucket}: reachable")
            if cfg.object_lock:
                from spoolup import objectlock

                objectlock.check_bucket(cfg, s3)  # ConfigError: exit 2 naming the option
                print(f"# bucket {cfg.bucket}: Object Lock enabled")
            from spoolup import capabilities

            try:  # what an earlier check-config (or service) killed during its probe left behind
                for what in capabilities.remove_stale_probes(cfg, s3):
                    print(f"# {what}")
            except S3Error as e:
                print(f"# warning: cannot remove the scratch of interrupted capability probes: {e}")
            caps = capabilities.probe_capabilities(cfg, s3)
            print("# S3 capabilities detected (conditional-writes = " + config_mod.toml_value(cfg.conditional_writes)
                  + "):")
            for line in caps.describe():
                print(f"#   {line}")
            refusal = caps.refusal(cfg)
            if refusal:
                option = "checksum-algorithm" if refusal.startswith("checksum-algorithm") else "conditional-writes"
                print(f"spoolup: {option}: {refusal}", file=sys.stderr)
                return EXIT_USAGE
        else:
            print(f"# bucket {cfg.bucket}: does not exist yet; it will be created when spoolup starts")
    except S3Error as e:
        print(f"spoolup: cannot access bucket {cfg.bucket}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "drain": cmd_drain,
    "status": cmd_status,
    "recover": cmd_recover,
    "check-config": cmd_check_config,
    "verify": cmd_verify,
}
