"""Schemathesis hooks for tests/interop/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS).

The run authenticates as the node's bootstrap admin. Left alone, the fuzzer soon sends
`DELETE /client/admin`, `POST /client/admin/secret` or a `PATCH /client/admin` that
drops the admin role (in the coverage phase, and in the stateful phase with ids taken
from `GET /client`), and every later call then gets 401. This hook sends such requests
to a client id that does not exist instead, whatever phase made them.
"""

import os

import schemathesis

PROTECTED = {
    c.strip().lower()
    for c in os.environ.get("ST_PROTECTED_CLIENTS", "admin").split(",")
    if c.strip()
}
STAND_IN = "st-protected-stand-in"


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    params = case.path_parameters
    if params and str(params.get("client_id", "")).strip().lower() in PROTECTED:
        params["client_id"] = STAND_IN
