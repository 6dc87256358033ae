"""The committed stubs are generated from the .proto: this fails when they are out of date."""
from __future__ import annotations

import subprocess
import sys

from google.protobuf import descriptor_pb2

from proto import trademark_search_pb2 as pb
from tests.conftest import ROOT


def test_stubs_match_the_proto(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.",
                    f"--descriptor_set_out={tmp_path / 'fresh.pb'}",
                    "proto/trademark_search.proto"], cwd=ROOT, check=True)
    fresh = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "fresh.pb").read_bytes())
    # What protoc embedded in the importable stub when it was generated.
    loaded = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    for message in fresh.file[0].message_type:  # the descriptor set adds derived json names
        for field in message.field:
            field.ClearField("json_name")
    assert fresh.file[0] == loaded, "stale stubs: run `make proto`"
    assert loaded.package == "trademark.v1"
    assert {m.name for m in loaded.service[0].method} == {
        "Search", "SearchStream", "GetIndexInfo", "GetThumbnails", "Reload"}
