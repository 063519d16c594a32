"""A pynetdicom storage SCU for the interop tests of pkg/dimse (interop_test.go).

usage: pynetdicom_scu.py HOST PORT CALLED_AE MODE FILE...

MODE is one of:

  store              Propose several presentation contexts (one per storage SOP
                     class with every native transfer syntax, one per SOP class
                     and native transfer syntax, and Verification), send
                     a C-ECHO, then send each FILE with C-STORE exactly as it is
                     encoded in the file, and release.
  abort-mid-dataset  Send a C-STORE-RQ for the first FILE followed by only the
                     first few P-DATA fragments of its data set, then A-ABORT.

Prints one JSON object on stdout and exits 0 once the association has been
used as described; the Go test judges the outcome. Exits 1 if no association
could be established.
"""

import json
import logging
import sys
from pathlib import Path

from pynetdicom import AE, _config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
NATIVE = [EXPLICIT_LE, IMPLICIT_LE, DEFLATED, EXPLICIT_BE]

STORAGE = [
    CTImageStorage,
    EnhancedCTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    PositronEmissionTomographyImageStorage,
    ComputedRadiographyImageStorage,
]

# Data set fragments sent before aborting: enough for the handler to be
# reading the data set when the A-ABORT arrives, far fewer than a large file has.
ABORT_AFTER_FRAGMENTS = 3

CALLING_AE = "PYNETDICOM"


def context_list(assoc):
    """The outcome of every proposed presentation context."""
    proposed = {cx.context_id: cx.transfer_syntax for cx in assoc.requestor.requested_contexts}
    out = []
    for cx in assoc.accepted_contexts + assoc.rejected_contexts:
        out.append(
            {
                "id": cx.context_id,
                "abstract_syntax": str(cx.abstract_syntax),
                "proposed": [str(ts) for ts in proposed[cx.context_id]],
                "accepted": cx.result == 0x00,
                "transfer_syntax": str(cx.transfer_syntax[0]) if cx.result == 0x00 else "",
            }
        )
    return sorted(out, key=lambda c: c["id"])


def store(host, port, called, files):
    # Send each file's data set bytes as they are, never re-encoded by
    # pydicom: the Go side checks that it receives exactly those bytes.
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=CALLING_AE)
    for sop in STORAGE:
        ae.add_requested_context(sop, NATIVE)
        for ts in NATIVE:
            ae.add_requested_context(sop, [ts])
    ae.add_requested_context(Verification, [EXPLICIT_LE, IMPLICIT_LE])
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        print(json.dumps({"established": False}))
        return 1
    result = {"established": True, "contexts": context_list(assoc), "stores": []}
    echo = assoc.send_c_echo()
    result["echo_status"] = int(echo.Status) if "Status" in echo else None
    for msg_id, path in enumerate(files, start=1):
        entry = {"file": path}
        try:
            rsp = assoc.send_c_store(path, msg_id=msg_id)
            entry["status"] = int(rsp.Status) if "Status" in rsp else None
        except (ValueError, AttributeError) as e:
            entry["error"] = str(e)
        result["stores"].append(entry)
    assoc.release()
    print(json.dumps(result))
    return 0


def abort_mid_dataset(host, port, called, path):
    meta, offset = split_dataset(Path(path))
    sop_class = meta.MediaStorageSOPClassUID
    ts = meta.TransferSyntaxUID
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        print(json.dumps({"established": False}))
        return 1
    cx = assoc.accepted_contexts[0]

    req = C_STORE()
    req.MessageID = 1
    req.Priority = 2
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = meta.MediaStorageSOPInstanceUID
    # What send_c_store does with STORE_SEND_CHUNKED_DATASET: stream the
    # data set from the file, starting after the file meta information.
    req._dataset_path = (Path(path), offset)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)

    # encode_msg yields the command set, then the data set fragments, each
    # as one P-DATA; the DUL sends them in order, and the A-ABORT after them.
    data_fragments = 0
    data_bytes = 0
    for pdata in msg.encode_msg(cx.context_id, assoc.acceptor.maximum_length):
        for _, pdv in pdata.presentation_data_value_list:
            if pdv[0] & 0x01 == 0:  # a data set fragment, not a command one
                data_fragments += 1
                data_bytes += len(pdv) - 1
        assoc.dul.send_pdu(pdata)
        if data_fragments == ABORT_AFTER_FRAGMENTS:
            break
    assoc.abort()
    print(
        json.dumps(
            {
                "established": True,
                "sop_instance_uid": str(meta.MediaStorageSOPInstanceUID),
                "data_fragments_sent": data_fragments,
                "data_bytes_sent": data_bytes,
                "data_set_length": Path(path).stat().st_size - offset,
            }
        )
    )
    return 0


def main(argv):
    if len(argv) < 6:
        print(__doc__, file=sys.stderr)
        return 2
    host, port, called, mode, files = argv[1], int(argv[2]), argv[3], argv[4], argv[5:]
    # pynetdicom logs to stderr, which the Go test shows when it fails.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if mode == "store":
        return store(host, port, called, files)
    if mode == "abort-mid-dataset":
        return abort_mid_dataset(host, port, called, files[0])
    print(f"unknown mode {mode!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
