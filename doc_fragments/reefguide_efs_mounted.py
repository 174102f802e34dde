# The option every instance-side module that writes on EFS takes (layout.efs_root_problem),
# documented once.


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  require_mount:
    description:
      - Refuse to act unless O(root) is a mount point (the efs_session action sets it; EFS was
        mounted there at the start, and if another run or a person unmounted it since, anything
        written would land on the instance's own disk under the empty mount point).
    type: bool
    default: false
"""
