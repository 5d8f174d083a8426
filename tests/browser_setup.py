"""Debian's headless Chromium and its chromedriver for the browser tests (tests/test_browser.py).

``make test`` runs this before pytest, so installing the packages never counts
against the suite's time; the tests' fixture calls ``ensure_chromium`` too, for
a direct pytest run. Only the distribution's ``chromium`` and ``chromium-driver``
packages are used: never a browser build downloaded by Selenium Manager or a script.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ("chromium", "chromium-driver")
INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]


class ChromiumUnavailable(RuntimeError):
    """The packages are missing and could not be installed here."""


def installed() -> tuple[Path, Path] | None:
    """The browser and its driver, when both are on PATH."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (Path(browser), Path(driver)) if browser and driver else None


def ensure_chromium() -> tuple[Path, Path]:
    """The browser and driver, installed with apt-get first when either is missing."""
    found = installed()
    if found:
        return found
    how = f"install them with `{' '.join(INSTALL)}` (as root)"
    if shutil.which("apt-get") is None:
        raise ChromiumUnavailable(f"the browser tests need Debian's {PACKAGES}: {how}")
    command = INSTALL if os.geteuid() == 0 else ["sudo", "-n", *INSTALL]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    attempts = [command]
    if os.geteuid() == 0:
        # A fresh image has no package lists yet: fetch them once, then try again.
        attempts.append(["sh", "-c", "apt-get update -q && " + " ".join(INSTALL)])
    output = ""
    for attempt in attempts:
        done = subprocess.run(attempt, env=env, capture_output=True, text=True, check=False)
        output = (done.stdout + done.stderr)[-2000:]
        found = installed()
        if done.returncode == 0 and found:
            return found
    raise ChromiumUnavailable(f"could not install {PACKAGES} ({how}):\n{output}")


def main() -> int:
    try:
        browser, driver = ensure_chromium()
    except ChromiumUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"browser tests: {browser} and {driver}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
