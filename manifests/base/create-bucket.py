"""Create the pretrain bucket when it is missing (idempotent). Run by the Job pretrain-create-bucket.

Reads the standard S3 environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, taken from
the Secret pretrain-s3) and PRETRAIN_BUCKET. Waits up to WAIT_SECONDS for the endpoint to answer (the object
store may still be starting), then exits 0 when the bucket exists, non-zero with a one-line reason otherwise.
"""

import os
import sys
import time
import urllib.parse

from minio import Minio
from minio.error import S3Error


def main() -> int:
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    url = urllib.parse.urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.netloc:
        print(f"AWS_ENDPOINT_URL must look like http(s)://host[:port], got {endpoint!r}", file=sys.stderr)
        return 2
    bucket = os.environ.get("PRETRAIN_BUCKET", "pretrain")
    client = Minio(
        url.netloc,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        secure=url.scheme == "https",
        region=os.environ.get("AWS_DEFAULT_REGION") or None,
    )
    deadline = time.monotonic() + float(os.environ.get("WAIT_SECONDS", "300"))
    while True:
        try:
            if client.bucket_exists(bucket):
                print(f"bucket {bucket} already exists at {endpoint}")
                return 0
            client.make_bucket(bucket)
            print(f"created bucket {bucket} at {endpoint}")
            return 0
        except S3Error as err:
            if err.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists") and client.bucket_exists(bucket):
                print(f"bucket {bucket} already exists at {endpoint}")
                return 0
            print(f"{endpoint}: {err.code}: {err.message} (check the Secret pretrain-s3)", file=sys.stderr)
            return 1
        except Exception as err:  # connection refused/reset while the server starts
            if time.monotonic() >= deadline:
                print(f"cannot reach {endpoint}: {err}", file=sys.stderr)
                return 1
            print(f"waiting for {endpoint}: {type(err).__name__}", flush=True)
            time.sleep(5)


if __name__ == "__main__":
    sys.exit(main())
