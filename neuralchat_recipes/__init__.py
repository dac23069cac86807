"""neuralchat-recipes: declarative YAML recipes that fine-tune chat LLMs."""

__version__ = "0.1.0"

# Bumped when the engine changes what a stage produces for the same config; part of every
# stage fingerprint, so artifacts made by an older engine are not reused by mistake.
ENGINE_FINGERPRINT_VERSION = "5"  # 5: SlimOrca turns of weight 0 are masked from the loss (data/formats.py)


def _process_start() -> float:
    """When this process started (Linux: from /proc), else when this package was imported."""
    import os
    import time

    try:
        with open("/proc/self/stat", encoding="utf-8") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


PROCESS_START = _process_start()  # for "command to first optimizer step"
