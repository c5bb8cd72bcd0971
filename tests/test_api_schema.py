"""The live OpenAPI schema, fuzzed with schemathesis against a real `geotune serve`: a bounded
number of generated requests per operation; no answer is a 5xx, and every answer conforms to
the schema (status documented, body valid, JSON content type)."""

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_serve import Server

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]  # fmt: skip
EXAMPLES = 8  # per operation: bounded, derandomized (the same requests every run)


def test_no_5xx_and_answers_conform(tmp_path):
    srv = Server(tmp_path / "home", "--dev", "--max-upload-mb", "5").start()
    try:
        schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
        failures, operations = [], 0
        for result in schema.get_all_operations():
            op = result.ok()
            operations += 1

            @given(case=op.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def run(case):
                case.call_and_validate(base_url=srv.url, checks=CHECKS, timeout=60)

            try:
                run()
            except BaseException as e:  # a group of the failing cases and checks
                if isinstance(e, KeyboardInterrupt):
                    raise
                failures.append(f"{op.method.upper()} {op.path}: {str(e)[:1500]}")
        assert operations >= 15
        assert not failures, "\n\n".join(failures)
    finally:
        srv.stop()
