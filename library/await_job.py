#!/usr/bin/python
# Documentation of the await_job action (action_plugins/await_job.py), for ansible-doc.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: await_job
short_description: Wait for a background (async) task to finish and return its result
description:
  - Polls the status of a task started with C(async) and C(poll=0) until it has finished or
    O(timeout) seconds have passed, then returns that task's result as its own.
  - Unlike C(async_status) with C(until) and C(retries), a run that is only waiting prints no
    C(FAILED - RETRYING) line per poll.
  - Runs where the background task runs (here, the controller).
version_added: "0.2.0"
author: reefguide-efs developers
options:
  jid:
    description: The job id the background task returned (C(ansible_job_id)).
    type: str
    required: true
  timeout:
    description: Seconds to wait at most; then the task fails naming the job.
    type: float
    default: 900
  delay:
    description: Seconds between polls.
    type: float
    default: 1
"""

EXAMPLES = r"""
- name: Wait until the instance is running and Online in SSM
  await_job:
    jid: "{{ power_job.ansible_job_id }}"
    timeout: 900
  delegate_to: localhost
  register: power
"""

RETURN = r"""
finished:
  description: Whether the job finished (always true on success).
  returned: always
  type: bool
polls:
  description: How many times the status was read.
  returned: always
  type: int
"""
