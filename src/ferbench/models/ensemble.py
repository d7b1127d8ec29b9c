"""A soft-voting ensemble: the mean of its members' class probabilities.

Averaging the softmax outputs of several networks trained apart is the usual last step of
FER2013's best results (Pramerdorfer & Kampel 2016, "Facial Expression Recognition using
Convolutional Neural Networks: State of the Art", Section 4: an ensemble of eight CNNs,
72.7% -> 75.2%; Kim et al. 2016 average committee members the same way). Nothing is
learned here: each member is a model of the same study and fold, trained by its own job;
the ensemble's job only loads their `model.pt`. By default (`vote: mean`) every member
has an equal share, so no validation face decides anything and the ensemble adds no
selection of its own. With `vote: validation` the shares are chosen on the fold's
validation split, among the points of the simplex `vote_step` apart (the equal shares
always among them), as the linear readouts choose their C: worth it where that split is
large (FER2013's 3,589 PublicTest faces), so that a weak member costs the vote nothing;
on one JAFFE subject's 21 faces it would be noise. The vote is then the members'
probabilities weighted by those shares (Pramerdorfer & Kampel weigh theirs equally).

`members` names registered models of the same study (two or more); the workflow resolves
each member's effective recipe into `member_recipes` (config.recipe), so a `model.pt` of
the ensemble rebuilds every member without reading another file. The ensemble takes the
faces at their crop size (its `input_size`, the dataset's `faces.size` unless a study sets
another) and gives each member its own size with resize.py's rule, area when shrinking,
bicubic when enlarging: one resize from the crop, as in the member's own job. Where they
agree (a JAFFE study at 64 px) the mean is exactly the mean of what each member predicts on
its own; elsewhere it differs by the rounding of the member's uint8 input. A member's own
`test_flip` is not used: the ensemble's `test_flip` mirrors its input once, for every
member alike.
"""

from __future__ import annotations

import itertools

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ferbench.models.base import FERModel

DEFAULTS = {
    # Any two or more models of the study; by default DeepFER and its baseline Deep-Emotion,
    # the two FER2013 papers' networks, both 48 px.
    "members": ["deepfer", "deep_emotion"],
    # Filled by the workflow from the members' recipes (config.recipe), never set by hand;
    # a member missing here is built with its paper defaults.
    "member_recipes": {},
    # Filled by the workflow: the members' `model.pt` of the fold (DAG edges), in order.
    "members_from": [],
    # The faces' side the ensemble is given: its dataset's crop size (config.recipe).
    "input_size": 48,
    # "mean": equal shares. "validation": the shares, `vote_step` apart, with the best
    # accuracy on the validation split (ties: the lower log loss).
    "vote": "mean",
    "vote_step": 0.1,
    "epochs": 0,  # evaluation only: the members are trained, the vote is at most chosen
}

VOTES = ("mean", "validation")


def vote_error(vote: str, vote_step: float) -> tuple[str, str] | None:
    """(key, why) of a vote setting the ensemble cannot take, or None: one check for the
    constructor and for the config, which names the block it came from."""
    if vote not in VOTES:
        return "vote", f"one of {', '.join(VOTES)}, got {vote!r}"
    if not 0 < vote_step <= 0.5:
        return "vote_step", f"a share step in (0, 0.5], got {vote_step!r}"
    return None


class Ensemble(FERModel):
    """`members` built from their recipes; forward gives the log of their probabilities
    weighted by `shares` (equal unless chosen on validation) per class."""

    #: Its job fits nothing by gradient: `fit_closed_form` sets the vote's shares.
    closed_form = True

    def __init__(self, num_classes: int, members=("deepfer", "deep_emotion"),
                 member_recipes=None, input_size: int = 48, vote: str = "mean",
                 vote_step: float = 0.1):
        from ferbench.models import get  # the registry imports this module

        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs two or more members, got {list(members)}")
        error = vote_error(vote, vote_step)
        if error:
            raise ValueError(f"ensemble {error[0]}: {error[1]}")
        self.vote, self.vote_step = vote, vote_step
        recipes = {name: (member_recipes or {}).get(name) or get(name).hyperparameters()
                   for name in members}
        self.members = nn.ModuleDict({name: get(name).build(num_classes, recipe)
                                      for name, recipe in recipes.items()})
        self.sizes = {name: recipe["input_size"] for name, recipe in recipes.items()}
        self.register_buffer("shares", torch.full((len(members),), 1.0 / len(members)))
        self.input_size = input_size
        self.traceable = all(member.traceable for member in self.members.values())
        self.face_like_maps = tuple(f"{name}\n{key}" for name, member in self.members.items()
                                    for key in member.face_like_maps)

    def member_inputs(self, x: torch.Tensor):
        """(name, member, x at the member's input size), per member."""
        for name, member in self.members.items():
            yield name, member, resized(x, self.sizes[name])

    def member_log_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(members, B, classes): each member's log softmax."""
        return torch.stack([torch.log_softmax(member(view).float(), 1)
                            for _, member, view in self.member_inputs(x)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log of the members' softmax weighted by `shares`: its own softmax is that vote."""
        log_probs = self.member_log_probabilities(x)
        return torch.logsumexp(log_probs + self.shares.log()[:, None, None], 0)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The negative log-likelihood of the vote (reported for validation only)."""
        return nn.functional.nll_loss(logits, targets)

    def candidate_shares(self) -> torch.Tensor:
        """(candidates, members): the equal shares first, then, for `vote: validation`,
        every point of the simplex `vote_step` apart, in a fixed order."""
        count = len(self.members)
        candidates = [[1.0 / count] * count]
        if self.vote == "validation":
            steps = round(1 / self.vote_step)
            candidates += [[*(i / steps for i in head), (steps - sum(head)) / steps]
                           for head in itertools.product(range(steps + 1), repeat=count - 1)
                           if sum(head) <= steps]
        return torch.tensor(candidates, dtype=torch.float64)

    @torch.no_grad()
    def fit_closed_form(self, train_x: torch.Tensor, train_y, val_x: torch.Tensor, val_y,
                        seed: int, flip: bool = False, held_out=()) -> pd.DataFrame:
        """Choose the shares on the validation split (nothing else is fitted: the training
        faces, `seed` and `held_out` are not used). With `flip` each validation face votes
        with its mirror, as `train.predict` tests. One history row per candidate; the
        buffer then holds the chosen shares."""
        self.eval()
        views = (val_x, val_x.flip(-1)) if flip else (val_x,)
        probs = (sum(self.member_log_probabilities(view).exp() for view in views)
                 / len(views)).double()
        targets = torch.as_tensor(val_y, dtype=torch.long)
        rows, best = [], None
        for i, shares in enumerate(self.candidate_shares(), start=1):
            vote = torch.einsum("m,mbk->bk", shares, probs)
            accuracy = float((vote.argmax(1) == targets).double().mean()) if len(targets) else 0.0
            loss = float(-vote.gather(1, targets[:, None]).clamp_min(1e-12).log().mean()
                         ) if len(targets) else 0.0
            rows.append({"epoch": i, "val_acc": accuracy, "val_loss": loss,
                         **{f"share_{name}": float(w) for name, w in zip(self.members, shares)}})
            if best is None or (accuracy, -loss) > best[0]:
                best = ((accuracy, -loss), i, shares)
        self.shares.copy_(best[2].float())
        history = pd.DataFrame(rows)
        history["chosen"] = history["epoch"] == best[1]
        return history

    def representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The mean vote itself (finite where a member can never predict a class)."""
        return {"mean_probability": torch.exp(self(x))}

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each member's own maps, named after it: where each voter looks."""
        return {f"{name}\n{key}": value for name, member, view in self.member_inputs(x)
                for key, value in member.attention_maps(view).items()}


def resized(x: torch.Tensor, side: int) -> torch.Tensor:
    """A [-1, 1] batch at side x side, filtered as resize.resize filters faces: area when
    shrinking, bicubic when enlarging (clipped to the range, as OpenCV clips to uint8)."""
    if x.shape[-1] == side:
        return x
    if side < x.shape[-1]:
        return F.interpolate(x, size=(side, side), mode="area")
    return F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False).clamp(-1, 1)


def load_members(model: Ensemble, hyperparameters: dict, labels=()) -> None:
    """The members' trained weights, from the `model.pt` files the workflow lists in
    `members_from` (one per member, in order); each must be the member the recipe names,
    trained on the same classes."""
    from ferbench.train import load_tensors

    paths = hyperparameters.get("members_from", [])
    if len(paths) != len(model.members):
        raise ValueError(f"ensemble of {', '.join(model.members)} given {len(paths)} model files")
    for (name, member), path in zip(model.members.items(), paths):
        saved = load_tensors(path)
        if saved["model"] != name or list(saved["labels"]) != list(labels):
            raise ValueError(f"{path} holds {saved['model']} on {saved['labels']}, not the "
                             f"member {name} on {list(labels)}")
        member.load_state_dict(saved["state_dict"])
