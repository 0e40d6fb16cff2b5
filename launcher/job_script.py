"""The job script's text: Jinja templates rendered with every value shell-quoted (``launcher render`` prints it).

Templates live in ``templates/`` (package ``launcher.templates``); a user directory
(``--template-dir`` or ``$LAUNCHER_TEMPLATE_DIR``) is searched first, so a site can override
``base.sh.j2`` or one scheduler's template. Filters:

- ``sh``: one value -> one shell word (``shlex.quote``); a list -> quoted words joined by spaces.
- ``sh_argv``: like ``sh`` for a list, but the placeholders of :mod:`launcher.shellwords`
  become double-quoted shell variables (``"${LAUNCHER_NEXT_LINK}"``, ``"${launcher_mpi_env[@]}"``).
- ``directive``: a value for a ``#SBATCH``/``#PBS``/``#$``/``#PJM`` line; only a safe character
  set passes, anything else fails the render.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Optional

import jinja2

from launcher.launchers import get_launch_method
from launcher.request import DIRECTIVE_SAFE, JobPlan
from launcher.schedulers import AFTER, LINK, Scheduler
from launcher.shellwords import sh, sh_argv
from plumbing.errors import UserError
from plumbing.runs import EXIT_RESUME, JOB


class _TemplateFailure(Exception):
    pass


def directive(value) -> str:
    text = str(value)
    if not DIRECTIVE_SAFE.match(text):
        raise _TemplateFailure(f"value {text!r} is not allowed in a scheduler directive")
    return text


def make_environment(template_dir: Optional[str] = None) -> jinja2.Environment:
    loaders = []
    for d in (template_dir, os.environ.get("LAUNCHER_TEMPLATE_DIR")):
        if d:
            if not os.path.isdir(d):
                raise UserError(f"--template-dir: {d} is not a directory")
            loaders.append(jinja2.FileSystemLoader(d))
    loaders.append(jinja2.FileSystemLoader(str(resources.files("launcher.templates"))))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["sh"] = sh
    env.filters["sh_argv"] = sh_argv
    env.filters["directive"] = directive
    return env


def _context(plan: JobPlan, scheduler: Scheduler, array_task: bool = False) -> dict:
    script_path = os.path.join(plan.run_dir, JOB, "job.sh")
    use_requeue = plan.profile.can_requeue and plan.chain == 1 and scheduler.name in ("slurm", "local")
    method = get_launch_method(plan.launch_method)
    if scheduler.name == "local":
        resume_mode = "local"
    else:
        resume_mode = "requeue" if use_requeue and scheduler.requeue_argv() else "chain"
    return dict(
        job=plan,
        profile=plan.profile,
        scheduler=scheduler.name,
        use_requeue=use_requeue,
        resume_mode=resume_mode,
        extend_argv=scheduler.submit_argv(plan, script_path, LINK, AFTER),
        requeue_argv=scheduler.requeue_argv(),
        ranks_argv=method.ranks_argv(plan),
        per_node_argv=method.per_node_argv(plan, scheduler.name),
        probe_argv=method.probe_argv(plan, scheduler.name),
        needs_per_node=method.needs_per_node,
        exit_resume=EXIT_RESUME,
        array_task=array_task,
    )


def _render(env: jinja2.Environment, name: str, render) -> str:
    try:
        return render(env.get_template(name))
    except _TemplateFailure as exc:
        raise UserError(f"render {name}: {exc}") from None
    except jinja2.TemplateNotFound as exc:
        raise UserError(
            f"template {exc.name} not found (searched --template-dir, then the shipped templates)"
        ) from None
    except jinja2.UndefinedError as exc:
        raise UserError(f"template {name}: {exc.message}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise UserError(f"template {exc.filename or exc.name}:{exc.lineno}: {exc.message}") from None


def render_script(
    plan: JobPlan, scheduler: Scheduler, template_dir: Optional[str] = None, array_task: bool = False
) -> str:
    """The job script for ``plan`` as text (bash); ``array_task``: a task of an array job
    (:mod:`launcher.arrays`), whose job id the array's script passes in ``LAUNCHER_TASK_JOB_ID``."""
    env = make_environment(template_dir)
    context = _context(plan, scheduler, array_task)
    text = _render(env, scheduler.template, lambda t: t.render(**context))
    return text if text.endswith("\n") else text + "\n"


def render_directives(plan: JobPlan, scheduler: Scheduler, template_dir: Optional[str] = None) -> str:
    """Only the scheduler directives of ``plan``'s job script (the template's ``directives`` block)."""
    env = make_environment(template_dir)
    context = _context(plan, scheduler)

    def block(template: jinja2.Template) -> str:
        if "directives" not in template.blocks:
            raise _TemplateFailure("it has no 'directives' block")
        return "".join(template.blocks["directives"](template.new_context(context)))

    return _render(env, scheduler.template, block).strip("\n")


def render_array_script(
    scheduler: Scheduler, directives: str, context: dict, template_dir: Optional[str] = None
) -> str:
    """The script of an array job (``array.sh.j2``): ``directives`` and the task-index mapping."""
    env = make_environment(template_dir)
    text = _render(env, "array.sh.j2", lambda t: t.render(directives=directives, scheduler=scheduler.name, **context))
    return text if text.endswith("\n") else text + "\n"
