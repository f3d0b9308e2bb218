"""moto's S3 API on 127.0.0.1, one request at a time: `python tests/moto_s3.py PORT [s3|all]`.

One request at a time: threaded moto checks If-None-Match and stores the object without a lock, so two concurrent
PUTs of one Delta commit could both succeed (AWS S3 makes that check atomic).

Listings without a delimiter are answered from the keys after `start-after` (or the continuation token), as AWS S3
answers them: moto itself builds and sorts every key object under the prefix on each listing, so each listing of a
Delta log of n commits cost O(n log n) Python work, and a long concurrent run O(n^2).
"""

import sys

from moto.s3.models import FakeDeleteMarker, S3Backend
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

moto_list_objects_v2 = S3Backend.list_objects_v2


def list_objects_v2(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys):
    if delimiter or not isinstance(bucket.keys, dict):
        return moto_list_objects_v2(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
    prefix, after = prefix or "", (self._pagination_tokens.get(continuation_token) or start_after or "")
    keys = []
    for name in sorted(n for n in dict.keys(bucket.keys) if n > after and n.startswith(prefix)):
        if len(keys) > max_keys:  # one past the page tells moto it is truncated
            break
        if not isinstance(key := bucket.keys.get(name), FakeDeleteMarker):
            keys.append(key)
    return self._truncate_result(keys, max_keys)


S3Backend.list_objects_v2 = list_objects_v2

if __name__ == "__main__":
    port, services = int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "s3"
    # the S3 app alone by default: moto's all-services dispatcher lists its own package folder on every request
    app = create_backend_app("s3") if services == "s3" else DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, app, threaded=False)
