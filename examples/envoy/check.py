#!/usr/bin/env python3
"""Ask keyward's ext_authz service what Envoy would ask, without Envoy.

Sends one `envoy.service.auth.v3.Authorization/Check` with Envoy's own
generated Python code (pip install grpcio xds-protos): the client's key in the
checked request's `authorization` header, the route's permissions in
`context_extensions["keyward_permissions"]`, the client address in
`attributes.source.address`, and the gateway's key in the call's
`authorization` metadata, as envoy.yaml's `initial_metadata` does.

    export KEYWARD_GATEWAY_KEY="$(cat gateway.key)"
    echo "$CLIENT_KEY" | python3 check.py --server localhost:50051 \\
        --permissions deploy:write --source 203.0.113.7

Prints the answer as JSON; exits 0 when allowed, 1 when denied, 2 when the
call itself failed (e.g. the gateway key was refused). The keys are never
printed.
"""

import argparse
import json
import os
import sys

import grpc
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import json_format


def check_request(key, permissions, source, key_header, extra_headers):
    headers = dict(extra_headers)
    if key:
        if key_header:
            headers[key_header] = key
        else:
            headers["authorization"] = f"Bearer {key}"
    attributes = attribute_context_pb2.AttributeContext(
        source=attribute_context_pb2.AttributeContext.Peer(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=source, port_value=40000)
            )
        ),
        request=attribute_context_pb2.AttributeContext.Request(
            http=attribute_context_pb2.AttributeContext.HttpRequest(
                method="GET", path="/", headers=headers
            )
        ),
    )
    if permissions is not None:
        attributes.context_extensions["keyward_permissions"] = permissions
    return external_auth_pb2.CheckRequest(attributes=attributes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="localhost:50051")
    parser.add_argument("--permissions", help="the route's keyward_permissions")
    parser.add_argument("--source", default="127.0.0.1", help="the client's address")
    parser.add_argument("--key-header", help="send the key in this header, not authorization")
    parser.add_argument(
        "--header", action="append", default=[], help="another request header, NAME=VALUE"
    )
    args = parser.parse_args()
    key = sys.stdin.readline().strip()
    extra = [tuple(h.split("=", 1)) for h in args.header]
    request = check_request(key, args.permissions, args.source, args.key_header, extra)
    metadata = [("authorization", f"Bearer {os.environ.get('KEYWARD_GATEWAY_KEY', '')}")]
    with grpc.insecure_channel(args.server) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        try:
            response = stub.Check(request, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 2
    answer = {"code": response.status.code}
    if response.HasField("ok_response"):
        ok = response.ok_response
        answer["allowed"] = True
        answer["headers"] = {h.header.key: h.header.value for h in ok.headers}
        answer["headers_to_remove"] = list(ok.headers_to_remove)
        answer["dynamic_metadata"] = json_format.MessageToDict(response.dynamic_metadata)
    else:
        denied = response.denied_response
        answer["allowed"] = False
        answer["status"] = denied.status.code
        answer["headers"] = {h.header.key: h.header.value for h in denied.headers}
        answer["body"] = json.loads(denied.body)
    print(json.dumps(answer, indent=2, sort_keys=True))
    return 0 if answer["allowed"] else 1


if __name__ == "__main__":
    sys.exit(main())
