"""Evaluation on local files and through lm-evaluation-harness, one module per job:

- `heldout`: a held-out split of a pool that never overlaps it (by id or content)
- `nll`: held-out response NLL given the prompt
- `mc`: multiple choice by continuation log-likelihood
- `gsm8k`: GSM8K exact match by greedy generation
- `harness`: lm-evaluation-harness tasks on the folder thresher itself loads
- `compare`: one table per task across models, differences with their stderr
- `runner`: `thresher eval` (targets, the task loop, the results JSON)
- `tasks`: task specs and results

Log-likelihoods come from the scoring machinery itself (a `cond` pass through `Scorer`), so an
evaluation scores response tokens exactly as selection does. Every task reports how many items
it evaluated and how many it skipped, with a reason per skipped item; a skipped item is never
counted as a zero.
"""

from thresher.evaluation.compare import compare, evaluation_html, format_comparisons
from thresher.evaluation.gsm8k import GSM8K_MAX_NEW_TOKENS, gold_number, gsm8k_exact, last_number
from thresher.evaluation.harness import lm_eval_tasks
from thresher.evaluation.heldout import (
    check_disjoint,
    content_hash,
    pool_hashes,
    split_heldout,
    write_split,
)
from thresher.evaluation.mc import MCItem, choose, mc_prompt, multiple_choice, read_mc
from thresher.evaluation.nll import response_nll
from thresher.evaluation.runner import (
    Evaluation,
    Target,
    evaluate,
    evaluate_model,
    evaluate_models,
    format_evaluation,
    read_pairs,
    resolve_settings,
    resolve_target,
    run_task,
)
from thresher.evaluation.tasks import (
    EVAL_MAX_LENGTH,
    TASK_KINDS,
    ModelEval,
    TaskResult,
    TaskSpec,
    format_results,
    parse_task,
)

__all__ = [
    "EVAL_MAX_LENGTH",
    "GSM8K_MAX_NEW_TOKENS",
    "TASK_KINDS",
    "Evaluation",
    "MCItem",
    "ModelEval",
    "Target",
    "TaskResult",
    "TaskSpec",
    "check_disjoint",
    "choose",
    "compare",
    "content_hash",
    "evaluate",
    "evaluate_model",
    "evaluate_models",
    "evaluation_html",
    "format_comparisons",
    "format_evaluation",
    "format_results",
    "gold_number",
    "gsm8k_exact",
    "last_number",
    "lm_eval_tasks",
    "mc_prompt",
    "multiple_choice",
    "parse_task",
    "pool_hashes",
    "read_mc",
    "read_pairs",
    "resolve_settings",
    "resolve_target",
    "response_nll",
    "run_task",
    "split_heldout",
    "write_split",
]
