# The sync engine's command line, for benchmarks and debugging (the modules
# call Sync directly): scripts/reefguide-sync push DIR s3://bucket/prefix.

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from ansible.module_utils.reefguide.aws import describe_error
from ansible.module_utils.reefguide.interrupt import Interrupted
from ansible.module_utils.reefguide.paths import UnsafePathError
from ansible.module_utils.reefguide.sync import Sync, summary
from ansible.module_utils.reefguide.sync_common import DEFAULT_CONCURRENCY, SyncError, parse_size
from ansible.module_utils.reefguide.sync_options import SyncOptions


def parse_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise SyncError("%r is not an s3://bucket/prefix URL" % url)
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="reefguide-sync", description="Sync a directory with s3://bucket/prefix.")
    parser.add_argument("direction", choices=["push", "pull"])
    parser.add_argument("path", help="local directory (or file, for push)")
    parser.add_argument("url", help="s3://bucket/prefix")
    parser.add_argument("--mode", choices=["merge", "mirror"], default="merge")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--part-size", default="16MiB")
    parser.add_argument("--sse", default="AES256", help="AES256, aws:kms or none")
    parser.add_argument("--sse-kms-key-id")
    parser.add_argument("--exclude", action="append", default=[])
    parser.add_argument("--checksum-cache", help="cache file (default under ~/.cache/reefguide-efs)")
    parser.add_argument("--no-checksum-cache", action="store_true")
    parser.add_argument("--rehash", action="store_true")
    parser.add_argument("--progress-file")
    parser.add_argument("--progress-interval", type=float, default=2.0)
    parser.add_argument("--max-delete", type=int)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--region")
    parser.add_argument("--profile")
    parser.add_argument("--endpoint-url")
    parser.add_argument("--max-attempts", type=int, default=10)
    parser.add_argument("--summary", action="store_true", help="one line instead of the JSON result")
    args = parser.parse_args(argv)
    try:
        bucket, prefix = parse_s3_url(args.url)
        opts = SyncOptions(
            direction=args.direction,
            bucket=bucket,
            prefix=prefix,
            path=args.path,
            mode=args.mode,
            concurrency=args.concurrency,
            part_size=parse_size(args.part_size),
            sse=None if args.sse.lower() == "none" else args.sse,
            sse_kms_key_id=args.sse_kms_key_id,
            exclude=args.exclude,
            checksum_cache=args.checksum_cache,
            use_checksum_cache=not args.no_checksum_cache,
            rehash=args.rehash,
            progress_file=args.progress_file,
            progress_interval=args.progress_interval,
            max_delete=args.max_delete,
            dry_run=args.dry_run,
            region=args.region,
            profile=args.profile,
            endpoint_url=args.endpoint_url,
            max_attempts=args.max_attempts,
        )
        result = Sync(opts).run()
    except Interrupted as exc:
        print("reefguide-sync: %s" % exc, file=sys.stderr)
        return exc.exit_status
    except (SyncError, UnsafePathError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - AWS errors, described
        print("error: %s" % describe_error(exc, "%s %s" % (args.direction, args.url)), file=sys.stderr)
        return 1
    if args.summary:
        print(summary(result))
    else:
        json.dump(result, sys.stdout, indent=1, sort_keys=True)
        print()
    return 0
