"""moto's server for the tests that enforce IAM (INITIAL_NO_AUTH_ACTION_COUNT), with its SigV4
check corrected for query strings: run as a script, `python tests/motoiam.py -H HOST -p PORT`.

Why: moto (5.x, upstream issue getmoto/moto#5948) checks a request's signature by signing it
again from werkzeug's `request.url`, which is an IRI: werkzeug decodes the query's %XX escapes
(all but %25 %26 %2B %23 %3D), so `prefix=.spoolup%2Fledger%2F` becomes `prefix=.spoolup/ledger/`.
botocore signed the escaped form (the canonical query string of SigV4 escapes every character
but A-Z a-z 0-9 - _ . ~), so every request with a '/' (or ':', ' ', a non-ASCII character...)
in a query value -- a ListObjectsV2 or ListMultipartUploads with a prefix holding a '/' --
was refused with SignatureDoesNotMatch, on every attempt, with correct credentials.  AWS and
Ceph RGW take these requests; only moto's check is wrong.  Here the query of the URL moto signs
again is escaped back to what the client signed; nothing else of moto is changed (the
signature is still computed and compared, and the policies still decide).
"""

from __future__ import annotations

import sys
import urllib.parse


def _escaped_query(query: str) -> str:
    """The query as SigV4 canonicalizes it from the IRI werkzeug made of it: each name and value
    escaped again (escapes werkzeug left alone, like %25 and %2B, stay as they are)."""
    pairs = []
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        pairs.append(urllib.parse.quote(name, safe="-_.~%") + eq + urllib.parse.quote(value, safe="-_.~%"))
    return "&".join(pairs)


def patch() -> None:
    from moto.iam import access_control

    original = access_control.IAMRequestBase._create_aws_request

    def _create_aws_request(self):
        request = original(self)
        parts = urllib.parse.urlsplit(request.url)
        if parts.query:
            request.url = urllib.parse.urlunsplit(parts._replace(query=_escaped_query(parts.query)))
        return request

    access_control.IAMRequestBase._create_aws_request = _create_aws_request


if __name__ == "__main__":
    patch()
    from moto.server import main

    main(sys.argv[1:])
