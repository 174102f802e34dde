"""`labctl up --iam`: the least-privilege policies of iam/ enforced in the lab.

After the stack is deployed (with moto's anonymous "testing" credentials),
three IAM users are created in moto: `lab-admin` (everything: labctl and
labd's supervisor), `reefguide-operator` (iam/operator-policy.json) and
`reefguide-instance` (iam/instance-policy.json), each policy rendered for the
deployed stack. The operator's keys become the lab's environment, the
instance user's keys the instance's ~/.aws/credentials; then moto is told to
enforce IAM (POST /moto-api/reset-auth 0).

What enforces what (see iam/README.md):
- moto checks every request's signature and action; it matches the Resource
  element for S3 only (other services are checked against "*"), names some S3
  actions after the API operation, and denies an Allow whose Condition it
  cannot evaluate. So moto gets a *view* of each policy: non-S3 resources
  widened to "*", Conditions dropped, moto's own S3 action names added beside
  the IAM ones (moto_view()).
- labd answers StartSession, TerminateSession, ResumeSession and DescribeInstanceInformation
  itself and checks them with evaluate() below against the policy as written
  (resources included, ${aws:username}/${aws:userid} resolved).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

from .state import REPO, iam_credentials, lab_dir, save

POLICY_DIR = REPO / "iam"
ADMIN, OPERATOR, INSTANCE = "lab-admin", "reefguide-operator", "reefguide-instance"
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}

# moto authorizes these requests under its own action name, not IAM's.
MOTO_S3_ALIASES = {
    "s3:ListBucket": ["s3:HeadBucket"],
}
# moto checks a multi-object delete (POST ?delete) as this action on the
# bucket's ARN; AWS checks it on each key.
MOTO_BUCKET_LEVEL = ("s3:DeleteObject",)

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z][A-Za-z0-9]*)\}")
_VARIABLE = re.compile(r"\$\{(aws:[A-Za-z]+)\}")


def render(text: str, values: dict[str, str]) -> str:
    """Substitute ${Name} for the names given; ${aws:...} policy variables stay."""
    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            raise KeyError("no value for placeholder ${%s}" % m.group(1))
        return values[m.group(1)]
    return _PLACEHOLDER.sub(sub, text)


def stack_values(info: dict[str, Any], region: str, account: str) -> dict[str, str]:
    return {"Region": region, "Account": account, "StackName": info["stack_name"],
            "InstanceId": info["instance_id"], "BucketName": info["bucket"], "FileSystemId": info["fs_id"],
            "ClusterName": info.get("cluster") or ""}


def load_policy(name: str, values: dict[str, str], policy_dir: Path = POLICY_DIR) -> dict[str, Any]:
    return json.loads(render((policy_dir / name).read_text(), values))


def _as_list(v: Any) -> list[str]:
    return v if isinstance(v, list) else [v]


def moto_view(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy as moto can evaluate it (see the module docstring)."""
    out = copy.deepcopy(policy)
    extra = []
    for st in out["Statement"]:
        actions = _as_list(st.get("Action", []))
        st.pop("Condition", None)
        if any(a.lower().startswith("s3:") for a in actions):
            st["Action"] = actions + [x for a in actions for x in MOTO_S3_ALIASES.get(a, [])]
            buckets = sorted({r.split("/", 1)[0] for r in _as_list(st.get("Resource", [])) if "/" in r})
            bucket_level = [a for a in actions if a in MOTO_BUCKET_LEVEL]
            if bucket_level and buckets:
                extra.append({"Sid": st.get("Sid", "") + "MotoBucketLevel", "Effect": st["Effect"],
                              "Action": bucket_level, "Resource": buckets})
        else:
            st["Resource"] = "*"
    out["Statement"] = _as_list(out["Statement"]) + extra
    return out


# -- a small evaluator for the calls labd answers ------------------------------
def _matches(pattern: str, value: str, variables: dict[str, str], case: bool) -> bool:
    missing = [v for v in _VARIABLE.findall(pattern) if v not in variables]
    if missing:
        return False  # an unresolvable policy variable matches nothing, as in IAM
    pattern = _VARIABLE.sub(lambda m: variables[m.group(1)], pattern)
    if not case:
        pattern, value = pattern.lower(), value.lower()
    return fnmatch.fnmatchcase(value, pattern)


def evaluate(policy: dict[str, Any], action: str, resource: str, variables: Optional[dict[str, str]] = None) -> str:
    """'allow', 'deny' (explicit) or 'implicit' for one action on one resource.
    Supports Effect, Action/NotAction, Resource/NotResource with wildcards and
    ${aws:...} variables; a statement with a Condition never allows (fail closed)."""
    variables = variables or {}
    allowed = False
    for st in _as_list(policy["Statement"]):
        if "NotAction" in st:
            hit = not any(_matches(p, action, {}, False) for p in _as_list(st["NotAction"]))
        else:
            hit = any(_matches(p, action, {}, False) for p in _as_list(st.get("Action", [])))
        if not hit:
            continue
        if "NotResource" in st:
            hit = not any(_matches(p, resource, variables, True) for p in _as_list(st["NotResource"]))
        else:
            hit = any(_matches(p, resource, variables, True) for p in _as_list(st.get("Resource", [])))
        if not hit:
            continue
        if st.get("Effect") == "Deny":
            return "deny"
        if "Condition" not in st:
            allowed = True
    return "allow" if allowed else "implicit"


def user_for_key(state: dict[str, Any], access_key_id: str) -> Optional[dict[str, Any]]:
    for user in state.get("iam", {}).get("users", {}).values():
        if user["access_key_id"] == access_key_id:
            return user
    return None


def credentials_file(creds: dict[str, str]) -> str:
    return "[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n" % (
        creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"])


def put_policy(iam: Any, user: str, policy: dict[str, Any]) -> None:
    """(Re)place the user's one inline policy, in moto's view."""
    iam.put_user_policy(UserName=user, PolicyName="reefguide-efs",
                        PolicyDocument=json.dumps(moto_view(policy)))


def set_enforcement(moto_port: int, on: bool) -> None:
    req = urllib.request.Request("http://127.0.0.1:%d/moto-api/reset-auth" % moto_port,
                                 data=b"0" if on else b"inf", method="POST",
                                 headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req, timeout=10).read()


def setup(state: dict[str, Any], client: Any, labd_status: Any) -> None:
    """Create the users, hand out their keys, then switch enforcement on.
    client(state, service) builds a boto3 client with the lab's current keys."""
    info = state["stacks"][state["stack_name"]]
    account = client(state, "sts").get_caller_identity()["Account"]
    values = stack_values(info, state["region"], account)
    policies = {ADMIN: ADMIN_POLICY,
                OPERATOR: load_policy("operator-policy.json", values),
                INSTANCE: load_policy("instance-policy.json", values)}
    iam = client(state, "iam")
    users: dict[str, Any] = {}
    for name, policy in policies.items():
        user = iam.create_user(UserName=name)["User"]
        put_policy(iam, name, policy)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        users[name] = {"name": name, "arn": user["Arn"], "user_id": user["UserId"], "policy": policy,
                       "access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
    state["iam"] = {"account": account, "values": values, "users": users, "enforced": False}
    save(state)
    (lab_dir() / "aws" / "credentials").write_text(credentials_file(iam_credentials(state, OPERATOR)))
    # labd's supervisor must poll moto with the admin's keys before moto starts checking them.
    deadline = time.time() + 10
    while labd_status(state).get("aws_access_key_id") != users[ADMIN]["access_key_id"]:
        if time.time() > deadline:
            raise RuntimeError("labd did not pick up the lab-admin credentials")
        time.sleep(0.05)
    set_enforcement(state["moto_port"], True)
    state["iam"]["enforced"] = True
    save(state)
