"""What a task runs with: the settings fixed at its submission (``timeout``,
its limits, the notifier's), written into its queue marker or a waiting
step's, and read back as the Config its runner works with."""

from .config import Config
from .errors import ConfigError
from .keyvalue import parse_key_value_text


# What a task's runner works with, fixed when the task is submitted: the
# rrcloudrc files may change or vanish before the task starts or while it runs.
# ``notifierSecret`` makes a marker a secret: markers are written 0600 (queue_task).
TASK_SETTINGS = ('timeout', 'maxTasks', 'sandbox', 'maxOutputSize', 'maxMemory', 'maxProcesses',
                 'maxLogSize', 'maxSuspend', 'notifierAllow', 'notifierSecret', 'cacheSize')


TASK_SETTINGS_MAX_BYTES = 4096


def task_settings(config, service=''):
    """The runner's settings of ``config`` as rrcloudrc lines (read back by task_config),
    the limits those of ``service``; ``notifierSecret`` only when one is set."""
    values = {'timeout': repr(config.timeout), 'maxTasks': str(config.maxTasks),
              'sandbox': 'yes' if config.sandbox else 'no', 'maxOutputSize': str(config.maxOutputSize),
              'maxMemory': str(config.limit_for(service, 'maxMemory')),
              'maxProcesses': str(config.limit_for(service, 'maxProcesses')),
              'maxLogSize': str(config.maxLogSize), 'maxSuspend': repr(config.maxSuspend),
              'notifierAllow': ', '.join(config.notifierAllow), 'notifierSecret': config.notifierSecret,
              'cacheSize': str(config.cacheSize)}
    return ''.join(f'{key} = {values[key]}\n' for key in TASK_SETTINGS
                   if values[key] or key != 'notifierSecret')


def task_config(text, store, allowed=TASK_SETTINGS):
    """The Config a runner works with: defaults, then the task's settings.

    They came through files and processes other than the runner's own, so
    they are checked as an rrcloudrc is, and only the ``allowed`` keys (the
    task settings; a forwarder's add its own) are taken.
    """
    if not text:
        raise ConfigError('its settings are missing')
    config = Config()
    config.dir = store.root
    for number, key, value in parse_key_value_text(text, 'settings'):
        if key not in allowed:
            raise ConfigError(f'settings:{number}: {key!r} is not a task setting')
        config._apply('settings', number, key, value, store.root)
    return config


def read_settings(path):
    """The settings in a marker (a queue marker, a waiting step's); '' when it is gone."""
    try:
        with open(path, 'rb') as handle:
            return handle.read(TASK_SETTINGS_MAX_BYTES).decode('utf-8', 'replace')
    except FileNotFoundError:
        return ''
