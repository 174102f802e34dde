# deployment_status runs in the task's worker when it runs on the controller: see reefguide_in_process.py.
from ansible.plugins.loader import action_loader

ActionModule = action_loader.get("reefguide_in_process", class_only=True)
