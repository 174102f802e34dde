# reefguide-efs's shared code, imported by the modules as ansible.module_utils.reefguide.<file>.
# One file per concern; README.md ("How the code is laid out") has a line for each.
