"""Mirror the archive folder to its git repository (GitHub, or any git URL), safely.

A clone in ``state/archive-mirror`` keeps the last state pushed. Each sync
commits the archive folder on top of it, rebases onto whatever the remote has
gained meanwhile (someone fixed a typo on GitHub), pushes without force, and
copies the merged files back into the archive folder. A conflict stops with
a clear message and loses nothing: the remote is untouched, our commit stays
in the mirror clone.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path

from .config import Config
from .errors import NewsletterError

MIRROR_DIR = "archive-mirror"


class MirrorError(NewsletterError):
    pass


@dataclass(frozen=True)
class SyncResult:
    committed: bool
    pushed: bool
    pulled: list[str]
    """Files the remote changed that were copied back into the archive folder."""


def _git(worktree: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["git", "-C", str(worktree), *args],
        check=False,
        capture_output=True,
        text=True,
        env={"GIT_TERMINAL_PROMPT": "0", "PATH": _path(), "HOME": str(Path.home()), "LC_ALL": "C"},
    )
    if check and result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise MirrorError(f"git {args[0]} failed: {message[-1] if message else result.returncode}")
    return result


def _path() -> str:
    import os

    return os.environ.get("PATH", "/usr/bin:/bin")


def sync_archive(config: Config, message: str) -> SyncResult | None:
    """Commit and push the archive folder; None when no remote is configured (local only)."""
    if not config.archive_remote:
        return None
    if shutil.which("git") is None:
        raise MirrorError("git is not installed: it is needed to push the archive (archive.remote)")
    worktree = config.paths.state / MIRROR_DIR
    branch = config.archive_branch
    _prepare(config, worktree, branch)
    remote_head = _fetch(worktree, branch)

    _copy_tree(config.paths.archive, worktree)
    _git(worktree, "add", "-A")
    committed = _git(worktree, "diff", "--cached", "--quiet", check=False).returncode != 0
    if committed:
        name, address = parseaddr(config.sender)
        _git(
            worktree,
            "-c", f"user.name={name or config.name}",
            "-c", f"user.email={address}",
            "commit", "--quiet", "-m", message,
        )
    if remote_head and _git(worktree, "merge-base", "--is-ancestor", remote_head, "HEAD", check=False).returncode != 0:
        rebase = _git(worktree, "-c", "user.name=newsletter", "-c", "user.email=newsletter@localhost", "rebase", remote_head, check=False)
        if rebase.returncode != 0:
            conflicted = _git(worktree, "diff", "--name-only", "--diff-filter=U", check=False).stdout.split()
            _git(worktree, "rebase", "--abort", check=False)
            raise MirrorError(
                f"the archive repository has changes to {', '.join(conflicted) or 'the same files'} that conflict "
                f"with ours; nothing was pushed. Merge them by hand in {worktree} (git pull, fix, push), "
                "then run `newsletter archive` again"
            )
    pulled = _copy_back(worktree, config.paths.archive)
    pushed = False
    if _git(worktree, "rev-parse", "HEAD").stdout.strip() != remote_head:
        push = _git(worktree, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", check=False)
        if push.returncode != 0:
            reason = (push.stderr or push.stdout).strip().splitlines()
            raise MirrorError(
                f"the archive repository refused the push to {branch}: "
                f"{reason[-1] if reason else 'no reason given'}; nothing was lost (the commit is kept in {worktree})"
            )
        pushed = True
    return SyncResult(committed, pushed, pulled)


def _prepare(config: Config, worktree: Path, branch: str) -> None:
    if (worktree / ".git").exists():
        current = _git(worktree, "remote", "get-url", "origin", check=False).stdout.strip()
        if current != config.archive_remote:
            _git(worktree, "remote", "set-url", "origin", config.archive_remote)
        return
    worktree.mkdir(parents=True, exist_ok=True)
    _git(worktree, "init", "--quiet", "--initial-branch", branch)
    _git(worktree, "remote", "add", "origin", config.archive_remote)


def _fetch(worktree: Path, branch: str) -> str:
    """The remote branch's commit ('' when it has none yet); the local branch follows it when it can."""
    fetch = _git(worktree, "fetch", "--quiet", "origin", check=False)
    if fetch.returncode != 0:
        reason = (fetch.stderr or fetch.stdout).strip().splitlines()
        raise MirrorError(f"cannot reach the archive repository: {reason[-1] if reason else 'git fetch failed'}")
    remote = _git(worktree, "rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch}", check=False).stdout.strip()
    has_head = _git(worktree, "rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode == 0
    if remote and not has_head:
        _git(worktree, "reset", "--quiet", "--hard", remote)
    return remote


def _copy_tree(source: Path, worktree: Path) -> None:
    """Archive files overwrite the mirror's; files only the remote has (a LICENSE) are kept."""
    for path in sorted(source.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            target = worktree / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                shutil.copy2(path, target)


def _copy_back(worktree: Path, archive: Path) -> list[str]:
    changed = []
    for path in sorted(worktree.rglob("*")):
        relative = path.relative_to(worktree)
        if ".git" in relative.parts or not path.is_file():
            continue
        target = archive / relative
        if not target.exists() or not filecmp.cmp(path, target, shallow=False):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            changed.append(str(relative))
    return changed
