"""Builds the example submissions (`examples/*.json`) from the readable package contents
(`examples/content/*.json`): each content becomes the `signed_data` of its submission, base64
of the JSON, as SIGNATURE_MODE=decode reads it.

    .venv/bin/python examples/build.py          write the examples
    .venv/bin/python examples/build.py --check  exit 1 if one is not what its content makes
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from service.cli.demo import ACTIVE_PATIENT, DEMO_CLIENT, DEMO_USER, INACTIVE_PATIENT
from service.signatures import encode_unsigned

HERE = Path(__file__).resolve().parent
UNKNOWN_PATIENT = "00000000-0000-4000-8000-000000000000"
WRITE = "encounter:write job:read"
VISIT = {
    "id": "52a1b6c4-7d8e-4f90-a1b2-c3d4e5f6a7b8",
    "period": {"start": "2026-12-01T08:55:00Z", "end": "2026-12-01T09:50:00Z"},
}

# name: (job type's action, patient, scope, content, with the visit[, the package the job
# type is of, when not `encounter_package`])
EXAMPLES = {
    "encounter_package": ("create", ACTIVE_PATIENT, WRITE, "encounter_package", True),
    "cancel_encounter_package": (
        "cancel",
        ACTIVE_PATIENT,
        WRITE,
        "cancel_encounter_package",
        False,
    ),
    "failed_403_missing_scope": ("create", ACTIVE_PATIENT, "job:read", "encounter_package", True),
    "failed_404_unknown_patient": ("create", UNKNOWN_PATIENT, WRITE, "encounter_package", True),
    "failed_409_inactive_patient": ("create", INACTIVE_PATIENT, WRITE, "encounter_package", True),
    "failed_422_invalid_package": ("create", ACTIVE_PATIENT, WRITE, "invalid_package", True),
    "failed_422_business_rules": ("create", ACTIVE_PATIENT, WRITE, "unknown_references", True),
    "diagnostic_report_package": (
        "create",
        ACTIVE_PATIENT,
        "diagnostic_report:write job:read",
        "diagnostic_report_package",
        False,
        "diagnostic_report_package",
    ),
    "cancel_diagnostic_report_package": (
        "cancel",
        ACTIVE_PATIENT,
        "diagnostic_report:write job:read",
        "cancel_diagnostic_report_package",
        False,
        "diagnostic_report_package",
    ),
    "service_request": (
        "create",
        ACTIVE_PATIENT,
        "service_request:write job:read",
        "service_request",
        False,
        "service_request",
    ),
}


def example(name: str) -> dict[str, Any]:
    action, patient_id, scope, content_name, with_visit, *package = EXAMPLES[name]
    content = json.loads((HERE / "content" / f"{content_name}.json").read_bytes())
    data: dict[str, Any] = {"visit": VISIT} if with_visit else {}
    data["signed_data"] = encode_unsigned(content)
    return {
        "type": f"{package[0] if package else 'encounter_package'}.{action}",
        "patient_id": patient_id,
        "requested_by": {"client_id": DEMO_CLIENT, "user_id": DEMO_USER, "scope": scope},
        "data": data,
    }


def main(argv: list[str]) -> int:
    stale = []
    for name in EXAMPLES:
        path = HERE / f"{name}.json"
        text = json.dumps(example(name), indent=2) + "\n"
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale examples (run python examples/build.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
