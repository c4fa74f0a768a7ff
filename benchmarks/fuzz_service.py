"""Hostile input against the model service: schemathesis over its own OpenAPI schema.

    python benchmarks/fuzz_service.py [--examples 120] [--seed 0] [--no-coverage]
                                      [--runs NAME=RUN_DIR ...] [--json]

The promise checked (issue 30): the service never answers a bad request with a 5xx,
every answer fits the schema it publishes, and a write without the API key (when one is
set) is refused with nothing written. The app runs in this process (schemathesis's ASGI
transport, no socket), over small ml-100k runs trained here unless ``--runs`` names
some, with a fresh SQLite user state. Three passes over every endpoint:

* ``open``: no API key; every request as generated;
* ``keyed``: an API key is set and the writes send it;
* ``keyless``: an API key is set and the writes (``/v1/events``, ``/v1/admin/reload``)
  go without it or with a wrong one: none may succeed, the event count of the state and
  every model's ``loaded_at`` must not change.

Each pass sends schemathesis's coverage cases (boundaries, missing and wrong-typed
fields, other methods; deterministic), then ``--examples`` Hypothesis examples per
operation and generation mode (positive: fits the schema; negative: does not). Half the
positive examples have their ids swapped for the catalog's items, the dataset's users
and the served model names, so requests reach the model and the state instead of
stopping at "unknown item". ``/v1/admin/reload`` is fuzzed too: a reload that fails must
leave the old model serving, which the run verifies at the end (each model still serves
its own run folder and answers a recommendation).

Checks on every response: ``not_a_server_error`` (no 5xx), ``response_schema_conformance``
(the body fits the documented schema of its status), ``status_code_conformance`` (the
status is documented), and `schema_valid_accepted`: a request that fits the schema is not
refused with a 4xx for a reason the schema does not state (schemathesis's
``positive_data_acceptance``, less the few refusals the schema states in words because
JSON Schema cannot, `STATED_REJECTIONS`); an exception out of the app or a request over
``--timeout`` seconds is a failure too. Prints the requests sent, the status histogram
(overall and per operation), each failure with a curl line to reproduce it, the command,
and one JSON line; exits 1 on any failure.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import collections
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from modrec.serve import ModelService
from modrec.serve.app import AppSettings, create_app
from modrec.serve.state import SQLiteUserState

log = logging.getLogger("fuzz_service")

WRITES = ("/v1/events", "/v1/admin/reload")

# Schema-valid requests the service may still refuse, each for a reason the schema states
# in words because JSON Schema cannot express it: (operation, or None for any; status;
# what the answer says). Any other refusal of a schema-valid request is a limit missing
# from the schema, which a client generated from it would meet by surprise.
STATED_REJECTIONS: list[tuple[str | None, int, str]] = [
    # as many timestamps as history items: JSON Schema cannot compare two lengths
    ("POST /v1/recommend", 422, "timestamps must come with a history, one per item"),
    # whether the model needs timestamps depends on the model named
    ("POST /v1/recommend", 422, "learned from elapsed time"),
    # whether an item exists depends on the catalogs served
    ("POST /v1/events", 422, "no served model has them"),
    # whether a model can take new items depends on the models served (a content tower),
    # and whether an item's media and fields fit on the disk and the served catalogs
    ("POST /v1/items", 422, "no served model can take new items"),
    ("POST /v1/items", 422, "nothing was stored"),
    # each item id once: JSON Schema's uniqueItems compares whole items, not one field
    ("POST /v1/items", 422, "each item id once per request"),
    # media are taken only by a service started with --media-dir
    (None, 422, "takes no media files"),
    # whether a folder holds a loadable run depends on the disk
    ("POST /v1/admin/reload", 422, "could not load"),
    # the body limit is in bytes, not in JSON Schema's terms (the 413's description)
    (None, 413, "request body over"),
]


def schema_valid_accepted(ctx: Any, response: Any, case: Case) -> bool | None:
    """``positive_data_acceptance`` (a schema-valid request gets 2xx, 401, 403, 404, 409,
    429 or a 5xx, which ``not_a_server_error`` fails), less `STATED_REJECTIONS`."""
    for operation, status, says in STATED_REJECTIONS:
        if (operation in (None, case.operation.label) and response.status_code == status
                and says in response.text):
            return True
    return positive_data_acceptance(ctx, response, case)


CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          schema_valid_accepted]
API_KEY = "fuzz-s3cret"


@dataclass
class Finding:
    """One failed check (or an exception, or a timeout) with what reproduces it."""

    kind: str  # the check's title, "exception", "timeout" or "keyless write accepted"
    operation: str
    status: int | None
    curl: str
    body: str  # the response's first 300 characters, or the exception


@dataclass
class Report:
    requests: int = 0
    seconds: float = 0.0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    by_operation: dict[str, collections.Counter[int]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    findings: list[Finding] = field(default_factory=list)
    slowest_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def count(self, kind: str) -> int:
        return sum(f.kind == kind for f in self.findings)

    @property
    def schema_violations(self) -> int:
        return self.count("Response violates schema")

    @property
    def undocumented_statuses(self) -> int:
        return self.count("Undocumented status code")

    @property
    def valid_rejected(self) -> int:
        """Schema-valid requests refused for a reason the schema does not state."""
        return self.count("Schema-valid request rejected")

    def add(self, other: Report) -> None:
        self.requests += other.requests
        self.seconds += other.seconds
        self.statuses.update(other.statuses)
        for operation, counts in other.by_operation.items():
            self.by_operation[operation].update(counts)
        self.findings += other.findings
        self.slowest_s = max(self.slowest_s, other.slowest_s)
        self.notes += other.notes

    def summary(self) -> dict[str, Any]:
        kinds = collections.Counter(f.kind for f in self.findings)
        return {"requests": self.requests, "seconds": round(self.seconds, 1),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "server_errors": self.server_errors,
                "schema_violations": self.schema_violations,
                "undocumented_statuses": self.undocumented_statuses,
                "valid_rejected": self.valid_rejected,
                "findings": dict(kinds), "slowest_s": round(self.slowest_s, 3),
                "notes": self.notes}


@dataclass
class Known:
    """Real ids to swap into generated requests, so that they get past the lookups."""

    items: list[str]
    users: list[str]
    models: list[str]

    @classmethod
    def of(cls, service: ModelService) -> Known:
        default = service.model(None)
        return cls(items=[str(i) for i in default.catalog.ids[1:]],
                   users=default.run.dataset.users["user_id"].astype(str).tolist(),
                   models=list(service.models))


def _steer(case: Case, known: Known, data: st.DataObject) -> None:
    """Swap the ids of a generated request for known ones, keeping every list's length
    (timestamps must stay one per history item)."""
    def item() -> str:
        return data.draw(st.sampled_from(known.items))

    def swap(fields: dict[str, Any]) -> None:
        for name, value in list(fields.items()):
            if name == "item_id" and isinstance(value, str):
                fields[name] = item()
            elif name == "user_id" and isinstance(value, str):
                fields[name] = data.draw(st.sampled_from(known.users))
            elif name == "model" and isinstance(value, str):
                fields[name] = data.draw(st.sampled_from(known.models))
            elif name in ("history", "exclude") and isinstance(value, list):
                fields[name] = [item() if isinstance(v, str) else v for v in value]
            elif name == "events" and isinstance(value, list):
                for event in value:
                    if isinstance(event, dict):
                        swap(event)

    for part in (case.path_parameters, case.query, case.body):
        if isinstance(part, dict):
            swap(part)


def _call(case: Case, report: Report, headers: dict[str, str] | None, timeout: float,
          ) -> Any:
    """Send one case, count its status and check the answer; every failure becomes a
    `Finding` (never raised: the run goes on and reports them all)."""
    label = case.operation.label
    started = time.perf_counter()
    try:
        response = case.call(headers=headers, timeout=timeout)
    except Exception as err:  # noqa: BLE001 - an exception out of the app is a finding
        kind = "timeout" if "timed out" in str(err).lower() else "exception"
        report.requests += 1
        if kind == "exception":  # a server would have answered 500 (Starlette does)
            report.statuses[500] += 1
            report.by_operation[label][500] += 1
        report.findings.append(Finding(kind, label, None, _curl(case, headers),
                                       f"{type(err).__name__}: {err}"[:300]))
        return None
    report.slowest_s = max(report.slowest_s, time.perf_counter() - started)
    report.requests += 1
    report.statuses[response.status_code] += 1
    report.by_operation[label][response.status_code] += 1
    try:
        case.validate_response(response, checks=CHECKS, headers=headers)
    except FailureGroup as group:
        for failure in group.exceptions:
            report.findings.append(Finding(failure.title, label, response.status_code,
                                           _curl(case, headers), response.text[:300]))
    return response


def _curl(case: Case, headers: dict[str, str] | None) -> str:
    try:
        return case.as_curl_command(headers=headers)
    except Exception:  # noqa: BLE001 - a case curl cannot spell is still reported
        return f"{case.method} {case.formatted_path} body={case.body!r}"[:500]


def fuzz(app: Any, *, examples: int, seed: int, coverage: bool = True,
         known: Known | None = None, headers_for: Callable[[str], dict[str, str] | None]
         = lambda path: None, only: Sequence[str] | None = None,
         timeout: float = 30.0) -> Report:
    """Every operation of ``app``'s schema (or those whose path is in ``only``): its
    coverage cases, then ``examples`` generated requests per generation mode.
    ``headers_for(path)``: extra headers (the API key) for a path."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    report = Report()
    started = time.perf_counter()
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):  # the app published an operation schemathesis
            report.findings.append(Finding(  # cannot read: a finding, not a crash
                "invalid schema", "?", None, "", str(result.err())[:300]))
            continue
        operation = result.ok()
        if only is not None and operation.path not in only:
            continue
        headers = headers_for(operation.path)
        if coverage:
            for case in schema.iter_coverage_cases(
                    operation, generation_modes=list(GenerationMode),
                    generation_config=schema.config.generation_for(operation=operation)):
                _call(case, report, headers, timeout)
        for mode in GenerationMode:
            try:
                _generated(operation, mode, report, examples=examples, seed=seed,
                           known=known if mode is GenerationMode.POSITIVE else None,
                           headers=headers, timeout=timeout)
            except Unsatisfiable:  # no parameters to break: nothing negative to send
                pass
    report.seconds = time.perf_counter() - started
    return report


def _generated(operation: Any, mode: GenerationMode, report: Report, *, examples: int,
               seed: int, known: Known | None, headers: dict[str, str] | None,
               timeout: float) -> None:
    """``examples`` Hypothesis examples of one operation (no shrinking: every failure is
    recorded, none raised); with ``known``, half get known ids (`_steer`)."""
    @hypothesis.seed(seed)
    @hypothesis.settings(max_examples=examples, database=None, deadline=None,
                         phases=[Phase.generate], print_blob=False,
                         suppress_health_check=list(HealthCheck))
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def one(case: Case, data: st.DataObject) -> None:
        if known is not None and data.draw(st.booleans()):
            _steer(case, known, data)
        _call(case, report, headers, timeout)

    one()


# ---- the three passes ----------------------------------------------------------------------
def _fingerprint(service: ModelService) -> dict[str, tuple[str, float]]:
    return {name: (str(m.folder), m.loaded_at) for name, m in service.models.items()}


def check_still_serving(service: ModelService, folders: dict[str, str],
                        report: Report) -> None:
    """After a fuzzed reload: every model still serves its own run and answers."""
    from fastapi.testclient import TestClient

    found = len(report.findings)
    for name, folder in folders.items():
        now = str(service.models[name].folder) if name in service.models else None
        if now != folder:
            report.findings.append(Finding("model swapped", "POST /v1/admin/reload", None,
                                           "", f"{name}: {folder} -> {now}"))
    with TestClient(create_app(service, AppSettings())) as client:
        for name in folders:
            reply = client.post("/v1/recommend", json={
                "history": ["50", "181"], "timestamps": [880000000, 880000600],
                "k": 5, "model": name})
            if reply.status_code != 200 or len(reply.json()["items"]) != 5:
                report.findings.append(Finding("stopped serving", "POST /v1/recommend",
                                               reply.status_code, "", reply.text[:300]))
    report.notes.append("after the run every model serves its own run and answers: "
                        f"{'yes' if len(report.findings) == found else 'NO'}")


def keyless_writes(service: ModelService, *, examples: int, seed: int, coverage: bool,
                   known: Known | None, timeout: float = 30.0) -> Report:
    """The writes with an API key set, sent without it (or with a wrong one): no 2xx,
    no event written, no model reloaded."""
    app = create_app(service, AppSettings(api_key=API_KEY))
    events, models = service.state.events(), _fingerprint(service)
    report = Report()
    for wrong in ({}, {"Authorization": "Bearer not-the-key"}):
        def headers_for(path: str, wrong: dict[str, str] = wrong) -> dict[str, str]:
            return wrong

        report.add(fuzz(app, examples=examples, seed=seed, coverage=coverage, known=known,
                        only=WRITES, headers_for=headers_for, timeout=timeout))
    accepted = sum(n for path in WRITES
                   for status, n in report.by_operation.get(f"POST {path}", {}).items()
                   if 200 <= status < 300)
    if accepted:
        report.findings.append(Finding("keyless write accepted", "POST (writes)", None, "",
                                       f"{accepted} writes answered 2xx"))
    written = service.state.events() - events
    if written:
        report.findings.append(Finding("keyless write accepted", "POST /v1/events", None,
                                       "", f"{written} events written without the key"))
    if _fingerprint(service) != models:
        report.findings.append(Finding("keyless write accepted", "POST /v1/admin/reload",
                                       None, "", "a model was reloaded without the key"))
    report.notes.append(f"keyless writes: {report.requests} sent, {accepted} accepted, "
                        f"{written} events written")
    return report


def run_all(service: ModelService, *, examples: int, seed: int, coverage: bool = True,
            timeout: float = 30.0) -> dict[str, Report]:
    """The three passes (open, keyed, keyless) over one service, then the check that it
    still serves every model from its own run."""
    known = Known.of(service)
    folders = {name: str(m.folder) for name, m in service.models.items()}
    reports = {
        "open": fuzz(create_app(service, AppSettings()), examples=examples, seed=seed,
                     coverage=coverage, known=known, timeout=timeout),
        "keyed": fuzz(create_app(service, AppSettings(api_key=API_KEY)), examples=examples,
                      seed=seed + 1, coverage=coverage, known=known, timeout=timeout,
                      headers_for=lambda path: ({"Authorization": f"Bearer {API_KEY}"}
                                                if path in WRITES else None)),
        "keyless": keyless_writes(service, examples=examples, seed=seed + 2,
                                  coverage=coverage, known=known, timeout=timeout),
    }
    check_still_serving(service, folders, reports["open"])
    return reports


# ---- the command --------------------------------------------------------------------------
@contextmanager
def _service(runs: dict[str, str], folder: Path) -> Iterator[ModelService]:
    service = ModelService.from_runs(runs, SQLiteUserState(folder / "state.db"))
    try:
        yield service
    finally:
        service.state.close()


def train_small(folder: Path) -> dict[str, str]:
    """Two small ml-100k runs: SASRec, and an HSTU that learned from elapsed time (so
    the timestamps path is served too)."""
    from modrec.config import build_config
    from modrec.train import train

    small = ["train.epochs=1", "model.max_len=30", "model.num_blocks=1"]
    return {name: str(train(build_config("ml-100k", name, overrides=small), folder / name,
                            progress=False))
            for name in ("sasrec", "hstu")}


def print_report(reports: dict[str, Report], command: str) -> Report:
    total = Report()
    for report in reports.values():
        total.add(report)
    print(f"# fuzz_service: {total.requests} requests in {total.seconds:.1f} s")
    print(f"command: {command}\n")
    print("| pass | requests | 2xx | 4xx | 5xx | schema violations | undocumented status "
          "| valid requests refused |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in reports.items():
        band = collections.Counter(f"{s // 100}xx" for s in r.statuses.elements())
        print(f"| {name} | {r.requests} | {band['2xx']} | {band['4xx']} | {band['5xx']} | "
              f"{r.schema_violations} | {r.undocumented_statuses} | {r.valid_rejected} |")
    print("\nstatus histogram: " + ", ".join(f"{s}: {n}" for s, n in
                                              sorted(total.statuses.items())))
    print("\n| operation | requests | statuses |\n|---|---|---|")
    for operation, counts in sorted(total.by_operation.items()):
        print(f"| {operation} | {sum(counts.values())} | "
              + ", ".join(f"{s}: {n}" for s, n in sorted(counts.items())) + " |")
    print(f"\n5xx responses: {total.server_errors}; schema violations: "
          f"{total.schema_violations}; undocumented status codes: "
          f"{total.undocumented_statuses}; schema-valid requests refused: "
          f"{total.valid_rejected}; exceptions: {total.count('exception')}; "
          f"timeouts: {total.count('timeout')}; slowest answer {total.slowest_s:.3f} s")
    for note in total.notes:
        print(f"- {note}")
    if total.findings:
        print(f"\n{len(total.findings)} failures:")
        seen: set[tuple[str, str, int | None]] = set()
        for f in total.findings:
            if (f.kind, f.operation, f.status) in seen:
                continue  # one example of each kind per operation and status
            seen.add((f.kind, f.operation, f.status))
            print(f"- {f.kind} on {f.operation} ({f.status}): {f.body}\n    {f.curl[:400]}")
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=120,
                        help="generated requests per operation and generation mode, per pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-coverage", action="store_true",
                        help="skip schemathesis's deterministic coverage cases")
    parser.add_argument("--runs", nargs="*", default=None, metavar="NAME=RUN_DIR",
                        help="serve these runs (default: train two small ml-100k runs)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds a request may take before it counts as a hang")
    parser.add_argument("--json", action="store_true", help="print one JSON line at the end")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    command = "python benchmarks/fuzz_service.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="modrec-fuzz-") as tmp:
        folder = Path(tmp)
        runs = (dict(spec.split("=", 1) for spec in args.runs) if args.runs
                else train_small(folder / "runs"))
        with _service(runs, folder) as service:
            reports = run_all(service, examples=args.examples, seed=args.seed,
                              coverage=not args.no_coverage, timeout=args.timeout)
    total = print_report(reports, command.strip())
    if args.json:
        print(json.dumps({"command": command.strip(), **total.summary(),
                          "passes": {k: v.summary() for k, v in reports.items()}}))
    return 1 if total.findings else 0


if __name__ == "__main__":
    sys.exit(main())
