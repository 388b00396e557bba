#!/usr/bin/env python3
"""Validate an API key with keyward from a Python backend, over TLS.

A backend calls keyward.v1.KeyService/Validate for each request it gets,
with the key its client presented and the permissions the request needs.
It authenticates to keyward with a key of its own that holds
`keyward:validate` (the built-in `validator` role).

The gRPC stubs are generated at run time from keyward's `proto/` directory
with grpcio-tools, so this file works with the protos of the server it talks
to and nothing generated is checked in.

    pip install grpcio grpcio-tools
    export KEYWARD_VALIDATOR_KEY="$(cat validator.key)"   # the backend's own key
    echo "$PRESENTED_KEY" | python3 validate_key.py \
        --server keyward.internal:50051 --ca-cert ca.crt \
        --permission deploy:write --client-ip 203.0.113.7

The key to check is read from stdin, never from the command line (where
`ps` and shell history would see it). Prints the answer as one JSON object;
exits 0 when the key is valid, 1 when it is not, 2 when keyward could not be
asked.
"""

import argparse
import importlib
import json
import os
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

try:  # Python 3.9+
    from importlib.resources import files as _resource_files
except ImportError:  # pragma: no cover
    _resource_files = None

DEFAULT_PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"


def load_stubs(proto_dir):
    """Compiles keyward's protos into a temporary package; returns
    (messages module, gRPC module) of keyward.v1.KeyService."""
    out = pathlib.Path(tempfile.mkdtemp(prefix="keyward-stubs-"))
    well_known = str(_resource_files("grpc_tools") / "_proto")
    protos = sorted(str(p) for p in pathlib.Path(proto_dir).glob("keyward/v1/*.proto"))
    if not protos:
        raise SystemExit(f"no keyward/v1/*.proto under {proto_dir}")
    status = protoc.main(
        ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{well_known}",
         f"--python_out={out}", f"--grpc_python_out={out}", *protos]
    )
    if status != 0:
        raise SystemExit(f"protoc failed on {proto_dir} (exit {status})")
    sys.path.insert(0, str(out))
    messages = importlib.import_module("keyward.v1.key_service_pb2")
    services = importlib.import_module("keyward.v1.key_service_pb2_grpc")
    return messages, services


class KeywardValidator:
    """What a backend keeps for its lifetime: one channel (HTTP/2 multiplexes
    every request over it) and its own credential."""

    def __init__(self, server, own_key, ca_cert=None, client_cert=None,
                 client_key=None, proto_dir=DEFAULT_PROTO_DIR):
        self._messages, services = load_stubs(proto_dir)
        read = lambda path: pathlib.Path(path).read_bytes() if path else None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(ca_cert),
            private_key=read(client_key),
            certificate_chain=read(client_cert),
        )
        self._channel = grpc.secure_channel(server, credentials)
        self._stub = services.KeyServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {own_key}"),)

    def validate(self, presented_key, required_permissions=(), client_ip=""):
        """Returns the ValidateResponse. A key that is not valid is an
        answer (valid=False), not an exception; a gRPC error means keyward
        could not answer, and the backend should fail closed."""
        request = self._messages.ValidateRequest(
            key=presented_key,
            required_permissions=list(required_permissions),
            client_ip=client_ip,
        )
        return self._stub.Validate(request, metadata=self._metadata, timeout=5)

    def close(self):
        self._channel.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="host:port of keyward (TLS)")
    parser.add_argument("--ca-cert", help="CA (PEM) to check keyward's certificate; "
                        "the system's CAs when absent")
    parser.add_argument("--client-cert", help="this backend's certificate (PEM), "
                        "for a keyward that requires one (mTLS)")
    parser.add_argument("--client-key", help="the private key (PEM) of --client-cert")
    parser.add_argument("--permission", action="append", default=[],
                        help="a permission the request needs (repeatable)")
    parser.add_argument("--client-ip", default="", help="the original caller's address")
    parser.add_argument("--proto-dir", default=str(DEFAULT_PROTO_DIR),
                        help="keyward's proto/ directory")
    args = parser.parse_args()

    own_key = os.environ.get("KEYWARD_VALIDATOR_KEY", "").strip()
    if not own_key:
        print("error: set KEYWARD_VALIDATOR_KEY to this backend's own keyward key",
              file=sys.stderr)
        return 2
    presented = sys.stdin.readline().strip()
    if not presented:
        print("error: no key on stdin", file=sys.stderr)
        return 2

    validator = KeywardValidator(args.server, own_key, args.ca_cert,
                                 args.client_cert, args.client_key, args.proto_dir)
    try:
        answer = validator.validate(presented, args.permission, args.client_ip)
    except grpc.RpcError as error:
        # The message never holds a key; the code says whether to retry.
        print(f"error: keyward: {error.code().name}: {error.details()}", file=sys.stderr)
        return 2
    finally:
        validator.close()

    denial = validator._messages.Denial.Name(answer.denial)
    print(json.dumps({
        "valid": answer.valid,
        "key_id": answer.key_id,
        "denial": denial,
        "owner": answer.owner,
        "roles": list(answer.roles),
        "permissions": list(answer.permissions),
        "labels": dict(answer.labels),
    }))
    return 0 if answer.valid else 1


if __name__ == "__main__":
    sys.exit(main())
