"""The API's Reason enum mirrors bpf/lib/reasons.h: every C reason under the
same value, named REASON_<C name> (the zero value REASON_UNSPECIFIED, as
protobuf style asks), and nothing else; and the generated code (enforcer/v1,
build output) is what the checked-in .proto compiles to."""

from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from enforcer.datapath.reasons import parse_reasons
from enforcer.v1 import enforcer_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
PROTO = "enforcer/v1/enforcer.proto"
GOLDEN = ROOT / "tests" / "datapath" / "reasons.golden"


def proto_name(c_name: str) -> str:
    return "REASON_UNSPECIFIED" if c_name == "REASON_UNSPEC" else f"REASON_{c_name}"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorProto:
    """The checked-in .proto compiled now, with the package build's protoc."""
    out = tmp_path_factory.mktemp("proto") / "descriptor.pb"
    include = Path(grpc_tools.__file__).parent / "_proto"
    assert protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}",
                        f"--descriptor_set_out={out}", str(PROTO_DIR / PROTO)]) == 0
    (fd,) = [f for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file if f.name == PROTO]
    # The Python generator leaves out the json_name protoc computes for every field.
    messages = list(fd.message_type)
    while messages:
        m = messages.pop()
        for field in (*m.field, *m.extension):
            field.ClearField("json_name")
        messages.extend(m.nested_type)
    return fd


def test_reason_enum_mirrors_the_c_header():
    c = {proto_name(k): v for k, v in parse_reasons().items() if not k.startswith("__")}
    proto = {v.name: v.number for v in pb.Reason.DESCRIPTOR.values}
    assert proto == c


def test_generated_code_comes_from_the_checked_in_proto(compiled):
    """enforcer/v1 is build output: its descriptor (every service, method,
    message, field number, enum value) must be the .proto's as it is now,
    or the package was built from another version (reinstall: make setup)."""
    generated = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert generated.name == PROTO
    assert generated == compiled, "enforcer/v1 was generated from another version of the .proto"


def test_proto_reasons_follow_the_header_in_order_and_are_append_only(compiled):
    """In the .proto itself: the Reason values in the order they are
    declared are the C enum's, in its order and with its numbers; every
    published reason (reasons.golden) keeps its number."""
    (reason,) = [e for e in compiled.enum_type if e.name == "Reason"]
    declared = [(v.name, v.number) for v in reason.value]
    header = [(proto_name(k), v) for k, v in parse_reasons().items() if not k.startswith("__")]
    assert declared == header
    assert [n for _, n in declared] == list(range(len(declared))), "numbers are not 0, 1, 2, ... in order"
    published = [line.split() for line in GOLDEN.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert published and declared[:len(published)] == [(proto_name(name), int(v)) for name, v in published]
