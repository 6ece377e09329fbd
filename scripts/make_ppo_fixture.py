#!/usr/bin/env python3
"""PPO parity fixture: the per-token rewards, advantages and returns, and the policy and value losses of one
micro-batch, as the last TRL PPOTrainer (0.29, `trl.experimental.ppo`; PPO left TRL after it) computes them.

Needs torch and TRL 0.29's PPO module; no model is involved, so TRL can sit beside a newer transformers:

    pip install torch && pip install --target /tmp/trl029 --no-deps trl==0.29.0
    PYTHONPATH=/tmp/trl029 python3 scripts/make_ppo_fixture.py   # writes crates/trl/tests/fixtures/ppo.json

`PPOTrainer.train` computes all of this inline, so `rollout_targets` and `micro_batch_loss` below are its lines
(trl/experimental/ppo/ppo_trainer.py, "4. compute rewards" to "6. compute advantages and returns", and the
micro-batch body of the PPO epoch loop) around TRL's own `masked_mean`, `masked_whiten` and `INVALID_LOGPROB`.
The rollout is fixed (seeded random log-probs, values and scores; responses of different lengths, one filling the
width); the new log-probs and value predictions of the loss are the rollout's, moved by seeded noise so that both
clip ranges bind somewhere.
"""
import json
import pathlib

import torch
from trl.experimental.ppo.ppo_trainer import INVALID_LOGPROB, masked_mean, masked_whiten

ROWS, WIDTH = 4, 6
# The index of each response's last token (TRL's `sequence_lengths`): one fills the width.
SEQUENCE_LENGTHS = [3, 5, 1, 4]
CASES = [
    {"name": "k1", "kl_coef": 0.05, "k3": False, "whiten_rewards": False, "gamma": 1.0, "lam": 0.95,
     "cliprange": 0.2, "cliprange_value": 0.2, "vf_coef": 0.1},
    {"name": "k3_whitened", "kl_coef": 0.2, "k3": True, "whiten_rewards": True, "gamma": 0.9, "lam": 0.8,
     "cliprange": 0.1, "cliprange_value": 0.05, "vf_coef": 0.5},
]


def rollout_targets(case, logprobs, ref_logprobs, values, scores, sequence_lengths):
    response_idxs = torch.arange(WIDTH).repeat(ROWS, 1)
    padding_mask = response_idxs > sequence_lengths.unsqueeze(1)
    logprobs = torch.masked_fill(logprobs, padding_mask, INVALID_LOGPROB)
    ref_logprobs = torch.masked_fill(ref_logprobs, padding_mask, INVALID_LOGPROB)
    sequence_lengths_p1 = sequence_lengths + 1
    padding_mask_p1 = response_idxs > (sequence_lengths_p1.unsqueeze(1))
    values = torch.masked_fill(values, padding_mask_p1, 0)
    logr = ref_logprobs - logprobs
    kl = -logr if not case["k3"] else (logr.exp() - 1) - logr
    non_score_reward = -case["kl_coef"] * kl
    rewards = non_score_reward.clone()
    actual_start = torch.arange(rewards.size(0))
    actual_end = torch.where(sequence_lengths_p1 < rewards.size(1), sequence_lengths_p1, sequence_lengths)
    rewards[actual_start, actual_end] += scores
    if case["whiten_rewards"]:
        rewards = masked_whiten(rewards, mask=~padding_mask_p1, shift_mean=False)
        rewards = torch.masked_fill(rewards, padding_mask_p1, 0)
    lastgaelam = 0
    advantages_reversed = []
    for t in reversed(range(WIDTH)):
        nextvalues = values[:, t + 1] if t < WIDTH - 1 else 0.0
        delta = rewards[:, t] + case["gamma"] * nextvalues - values[:, t]
        lastgaelam = delta + case["gamma"] * case["lam"] * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], axis=1)
    returns = advantages + values
    advantages = masked_whiten(advantages, ~padding_mask)
    advantages = torch.masked_fill(advantages, padding_mask, 0)
    return dict(logprobs=logprobs, ref_logprobs=ref_logprobs, values=values, kl=kl, rewards=rewards,
                advantages=advantages, returns=returns, padding_mask=padding_mask, padding_mask_p1=padding_mask_p1)


def micro_batch_loss(case, r, new_logprobs, vpred):
    new_logprobs = torch.masked_fill(new_logprobs, r["padding_mask"], INVALID_LOGPROB)
    vpred = torch.masked_fill(vpred, r["padding_mask_p1"], 0)
    vpredclipped = torch.clamp(vpred, r["values"] - case["cliprange_value"], r["values"] + case["cliprange_value"])
    vf_losses1 = torch.square(vpred - r["returns"])
    vf_losses2 = torch.square(vpredclipped - r["returns"])
    vf_loss_max = torch.max(vf_losses1, vf_losses2)
    vf_loss = 0.5 * masked_mean(vf_loss_max, ~r["padding_mask_p1"])
    vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).float(), ~r["padding_mask_p1"])
    logprobs_diff = new_logprobs - r["logprobs"]
    ratio = torch.exp(logprobs_diff)
    pg_losses = -r["advantages"] * ratio
    pg_losses2 = -r["advantages"] * torch.clamp(ratio, 1.0 - case["cliprange"], 1.0 + case["cliprange"])
    pg_loss_max = torch.max(pg_losses, pg_losses2)
    pg_loss = masked_mean(pg_loss_max, ~r["padding_mask"])
    loss = pg_loss + case["vf_coef"] * vf_loss
    pg_clipfrac = masked_mean((pg_losses2 > pg_losses).float(), ~r["padding_mask"])
    approxkl = 0.5 * (logprobs_diff**2).mean()
    return dict(new_logprobs=new_logprobs, vpred=vpred, loss=loss.item(), pg_loss=pg_loss.item(),
                vf_loss=vf_loss.item(), pg_clipfrac=pg_clipfrac.item(), vf_clipfrac=vf_clipfrac.item(),
                approxkl=approxkl.item(), ratio=ratio.mean().item())


def main():
    out = []
    for k, case in enumerate(CASES):
        g = torch.Generator().manual_seed(k)
        logprobs = -torch.rand(ROWS, WIDTH, generator=g) * 4
        ref_logprobs = logprobs + torch.randn(ROWS, WIDTH, generator=g) * 0.3
        values = torch.randn(ROWS, WIDTH, generator=g)
        scores = torch.randn(ROWS, generator=g) * 2
        lengths = torch.tensor(SEQUENCE_LENGTHS)
        r = rollout_targets(case, logprobs, ref_logprobs, values, scores, lengths)
        new_logprobs = r["logprobs"] + torch.randn(ROWS, WIDTH, generator=g) * 0.3
        vpred = r["values"] + torch.randn(ROWS, WIDTH, generator=g) * 0.3
        loss = micro_batch_loss(case, r, new_logprobs, vpred)
        rows = lambda t: t.tolist()
        out.append(dict(case, sequence_lengths=SEQUENCE_LENGTHS, scores=scores.tolist(),
                        logprobs=rows(r["logprobs"]), ref_logprobs=rows(r["ref_logprobs"]), values=rows(r["values"]),
                        kl=rows(r["kl"]), rewards=rows(r["rewards"]), advantages=rows(r["advantages"]),
                        returns=rows(r["returns"]), new_logprobs=rows(loss.pop("new_logprobs")),
                        vpred=rows(loss.pop("vpred")), **loss))
    path = pathlib.Path("crates/trl/tests/fixtures/ppo.json")
    path.write_text(json.dumps({"trl": "0.29.0", "cases": out}, indent=1) + "\n")
    print(f"wrote {path}: {len(out)} cases")


if __name__ == "__main__":
    main()
