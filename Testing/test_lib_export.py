"""'Send to PACS' as the panel does it, minus Slicer: MedGenSlicerLib against a real engine and a real Orthanc.

The engine (a child process) is started with the Orthanc as its one destination, `pacs`; the panel
only ever names it. What arrived is read back through Orthanc's REST API.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from MedGenSlicerLib import (
    EngineClient,
    ExportMonitor,
    JobMonitor,
    RequestRefused,
    array_upload,
    export_summary,
)
from test_lib_engine import IJK_TO_RAS, follow, parameters, volume_and_mask, wait_state

pytest.importorskip("requests")  # the Orthanc fixture reads Orthanc's REST API with it
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "engine" / "tests"))
from orthanc_fixture import CALLING_AET, orthanc_executable  # noqa: E402
from orthanc_fixture import orthanc  # noqa: F401,E402 (the module-scoped fixture)

pytestmark = pytest.mark.skipif(orthanc_executable() is None, reason="Orthanc is not installed (Debian package "
                                "orthanc)")


@pytest.fixture(scope="module")
def engine_with_pacs(tmp_path_factory, tiny_model, orthanc, server_process_class):
    server = server_process_class(
        tmp_path_factory.mktemp("engine-pacs") / "data", tiny_model, "--cpu-threads", "1", "--max-steps", "200",
        "--destination", f"pacs={orthanc.dicom_destination}?calling_aet={CALLING_AET}",
        python=os.environ.get("MEDGEN_ENGINE_PYTHON", sys.executable),
    )
    server.start()
    yield server
    server.stop()


def test_send_to_pacs_delivers_the_variant_and_reports_the_counts(engine_with_pacs, orthanc):
    client = EngineClient(engine_with_pacs.url, engine_with_pacs.token)
    info = client.check_connection()
    assert [d["name"] for d in info["destinations"]] == ["pacs"]

    volume, mask = volume_and_mask()
    job = follow(JobMonitor(client, array_upload(volume, IJK_TO_RAS, mask, parameters(), slices=[2]),
                            poll_interval=0.1).start())
    assert job[-1].kind == "finished" and job[-1].status["state"] == "succeeded"
    job_id = job[-1].status["id"]

    orthanc.clear()
    events = follow(ExportMonitor(client, job_id, "pacs", variant=1, poll_interval=0.1).start(), timeout=60.0)
    assert events[0].kind == "started" and events[-1].kind == "finished", events[-1].error
    status = events[-1].status
    assert status["state"] == "succeeded" and status["delivered"] == status["total"] == 1
    assert export_summary(status) == "Sent 1 instance(s) to 'pacs'."

    (instance_id,) = orthanc.instance_ids()
    tags = orthanc.instance_tags(instance_id)
    assert tags["SOPInstanceUID"] == status["results"][0]["sop_instance_uid"]
    assert orthanc.get(f"/instances/{instance_id}/content/0008-001c").decode().strip("\x00 ") == "YES"

    again = follow(ExportMonitor(client, job_id, "pacs", poll_interval=0.1).start(), timeout=60.0)[-1].status
    assert "already at 'pacs'" in export_summary(again) and len(orthanc.instance_ids()) == 1


def test_send_to_pacs_refusals_reach_the_panel_as_sentences(engine_with_pacs):
    client = EngineClient(engine_with_pacs.url, engine_with_pacs.token)
    volume, mask = volume_and_mask()
    running = client.submit(array_upload(volume, IJK_TO_RAS, mask, parameters(num_inference_steps=200)))["id"]
    wait_state(client, running, "running")
    with pytest.raises(RequestRefused, match="export a variant once the job has finished") as refused:
        client.export(running, "pacs")
    assert refused.value.status == 409

    error = follow(ExportMonitor(client, running, "archive", poll_interval=0.1).start(), timeout=60.0)[-1]
    assert error.kind == "error" and isinstance(error.error, RequestRefused)
    assert "no destination named 'archive'; this engine offers: pacs" in str(error.error)
    client.cancel(running)

    failed = {"destination": "pacs", "state": "failed", "total": 3, "delivered": 1, "failed": 2,
              "message": "2 of 3 instance(s) did not reach 'pacs': refused"}
    assert export_summary(failed) == "Send to pacs failed (1 of 3 instance(s) delivered): 2 of 3 instance(s) " \
                                     "did not reach 'pacs': refused"
    assert export_summary({**failed, "state": "running", "failed": 0}) == "Sending to pacs: 1 of 3 instance(s)…"
