"""Mirror the archive folder to its git repository (GitHub, or any git URL), safely.

A clone in ``state/archive-mirror`` holds two branches. ``newsletter-generated``
records only what the pipeline generated, commit after commit. The publishing
branch (``[archive] branch``) follows the remote, and each sync *merges* the
generated branch into it. Git's three-way merge then keeps edits made on the
remote (someone fixed a typo on GitHub) until the pipeline regenerates those
very lines; a real conflict stops with a clear message, the remote untouched.
The index and feed are rebuilt from the merged tree, so archives pushed from
two machines stay complete. Never a force push.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path

from pipeline.archive.markdown import write_index
from pipeline.config import Config
from pipeline.errors import MirrorError

MIRROR_DIR = "archive-mirror"
GENERATED = "newsletter-generated"
INDEX_FILES = ("README.md", "feed.xml")


@dataclass(frozen=True)
class SyncResult:
    committed: bool
    pushed: bool
    merged_remote: bool
    """The remote had commits the pipeline lacked; they were merged in."""


class _Git:
    def __init__(self, worktree: Path, config: Config) -> None:
        self.worktree = worktree
        name, address = parseaddr(config.sender)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(Path.home()),
            "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": name or config.name,
            "GIT_AUTHOR_EMAIL": address,
            "GIT_COMMITTER_NAME": name or config.name,
            "GIT_COMMITTER_EMAIL": address,
        }

    def run(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["git", "-C", str(self.worktree), *args],
            check=False,
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
        )
        if check and result.returncode != 0:
            command = next((a for a in args if not a.startswith("-")), "git")
            raise MirrorError(f"git {command} failed: {_reason(result)}")
        return result

    def out(self, *args: str, env: dict[str, str] | None = None) -> str:
        return self.run(*args, env=env).stdout.strip()

    def ok(self, *args: str) -> bool:
        return self.run(*args, check=False).returncode == 0


def _reason(result: subprocess.CompletedProcess[str]) -> str:
    """What git and the remote said: 'fatal:', 'remote:' and '!' lines, not the boilerplate hints."""
    lines = [line.strip() for line in (result.stderr + "\n" + result.stdout).splitlines() if line.strip()]
    telling = [
        line
        for line in lines
        if line.startswith(("fatal:", "remote:", "!", "error: ")) and "failed to push some refs" not in line
    ]
    return "; ".join(telling or lines[-1:]) or f"exit code {result.returncode}"


def sync_archive(config: Config, message: str) -> SyncResult | None:
    """Commit the archive folder and push it; None when no remote is configured (local only)."""
    if not config.archive_remote:
        return None
    if shutil.which("git") is None:
        raise MirrorError("git is not installed: it is needed to push the archive (archive.remote)")
    worktree = config.paths.state / MIRROR_DIR
    git = _Git(worktree, config)
    branch = config.archive_branch
    _prepare(git, config)
    fetch = git.run("fetch", "--quiet", "origin", check=False)
    if fetch.returncode != 0:
        raise MirrorError(f"cannot reach the archive repository {config.archive_remote}: {_reason(fetch)}")
    remote = f"refs/remotes/origin/{branch}"
    remote_head = (
        git.out("rev-parse", "--verify", "--quiet", remote)
        if git.ok("rev-parse", "--verify", "--quiet", remote)
        else ""
    )

    committed = _commit_generated(git, config.paths.archive, message)
    if git.ok("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"):
        git.run("checkout", "--quiet", "--force", branch)
    else:
        git.run("checkout", "--quiet", "--force", "-B", branch, remote_head or GENERATED)
    merged_remote = bool(remote_head) and not git.ok("merge-base", "--is-ancestor", remote_head, "HEAD")
    if merged_remote:
        _merge(git, config, remote_head, f"Merge the archive repository's {branch}")
    _merge(git, config, GENERATED, message)
    _refresh_index(git, config)

    pushed = False
    if git.out("rev-parse", "HEAD") != remote_head:
        push = git.run("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", check=False)
        if push.returncode != 0:
            raise MirrorError(
                f"the archive repository refused the push to {branch}: {_reason(push)}; "
                f"nothing was lost (the commits wait in {worktree})"
            )
        pushed = True
    return SyncResult(committed, pushed, merged_remote)


def _prepare(git: _Git, config: Config) -> None:
    worktree = git.worktree
    if not (worktree / ".git").exists():
        worktree.mkdir(parents=True, exist_ok=True)
        git.run("init", "--quiet", "--initial-branch", config.archive_branch)
        git.run("remote", "add", "origin", config.archive_remote)
    elif git.out("remote", "get-url", "origin") != config.archive_remote:
        git.run("remote", "set-url", "origin", config.archive_remote)
    # So `git pull` works in the mirror when an editor has to merge by hand.
    git.run("config", f"branch.{config.archive_branch}.remote", "origin")
    git.run("config", f"branch.{config.archive_branch}.merge", f"refs/heads/{config.archive_branch}")
    git.run("config", "pull.rebase", "false")


def _commit_generated(git: _Git, archive: Path, message: str) -> bool:
    """Snapshot the archive folder onto the generated branch, without touching the mirror's files."""
    index = {"GIT_INDEX_FILE": str(git.worktree / ".git" / "newsletter-generated.index")}
    parent = (
        git.out("rev-parse", "--verify", "--quiet", GENERATED)
        if git.ok("rev-parse", "--verify", "--quiet", GENERATED)
        else ""
    )
    git.run("read-tree", "--empty", env=index)
    git.run(f"--work-tree={archive}", "add", "--all", "--", ".", ":(exclude).*", env=index)
    tree = git.out("write-tree", env=index)
    if parent and git.out("rev-parse", f"{parent}^{{tree}}") == tree:
        return False
    commit = git.out("commit-tree", tree, *(["-p", parent] if parent else []), "-m", message)
    git.run("update-ref", f"refs/heads/{GENERATED}", commit)
    return True


def _merge(git: _Git, config: Config, ref: str, message: str) -> None:
    merge = git.run("merge", "--no-edit", "--allow-unrelated-histories", "-m", message, ref, check=False)
    if merge.returncode == 0:
        return
    conflicted = git.out("diff", "--name-only", "--diff-filter=U").split()
    if conflicted and set(conflicted) <= set(INDEX_FILES):
        # The index and feed are derived: rebuild them from the merged issue files instead.
        _write_index_files(config, git.worktree)
        git.run("add", "--", *conflicted)
        git.run("commit", "--quiet", "--no-edit")
        return
    git.run("merge", "--abort", check=False)
    raise MirrorError(
        f"the archive repository has changes to {', '.join(conflicted) or 'the same files'} that conflict with "
        f"the generated archive; nothing was pushed. Merge by hand: cd {git.worktree} && git merge {GENERATED}, "
        f"fix the files, git commit, git push origin {config.archive_branch}"
    )


def _refresh_index(git: _Git, config: Config) -> None:
    _write_index_files(config, git.worktree)
    git.run("add", "--", *INDEX_FILES)
    if not git.ok("diff", "--cached", "--quiet"):
        git.run("commit", "--quiet", "-m", "Update the archive index and feed")


def _write_index_files(config: Config, folder: Path) -> None:
    write_index(config, folder)
