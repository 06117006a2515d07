"""The API's Reason enum mirrors bpf/lib/reasons.h: every C reason under the
same value, named REASON_<C name>, and nothing else."""

from enforcer.datapath.reasons import parse_reasons
from enforcer.v1 import enforcer_pb2 as pb


def test_reason_enum_mirrors_the_c_header():
    c = {f"REASON_{k}": v for k, v in parse_reasons().items() if not k.startswith("__")}
    proto = {v.name: v.number for v in pb.Reason.DESCRIPTOR.values}
    assert proto == c


def test_generated_code_comes_from_the_checked_in_proto():
    """enforcer/v1 is build output: its descriptor must be the .proto's."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "proto/enforcer/v1/enforcer.proto").read_text()
    for method in pb.DESCRIPTOR.services_by_name["Enforcer"].methods:
        assert f"rpc {method.name}(" in text
