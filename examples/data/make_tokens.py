"""Write tokens.npy: a token stream the example transformer can learn.

A Markov chain over a 64-token vocabulary: the token after ``t`` is
``successor[t]`` (a fixed random permutation) with probability 0.9, and a
uniformly random token otherwise.  The best possible next-token loss is the
chain's entropy, about 0.1·ln 64 + H(0.9) ≈ 0.74 nats, against ln 64 ≈ 4.16
for guessing, so training progress is plain to see.  Deterministic (seed 0);
run ``python examples/data/make_tokens.py`` to regenerate the committed file.
"""

import os

import numpy as np

VOCAB = 64
TOKENS = 32768
P_FOLLOW = 0.9


def markov_tokens(n: int, vocab: int = VOCAB, p_follow: float = P_FOLLOW, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    successor = rng.permutation(vocab)
    follow = rng.random(n) < p_follow
    noise = rng.integers(vocab, size=n)
    out = np.empty(n, dtype=np.int32)
    out[0] = noise[0]
    for i in range(1, n):
        out[i] = successor[out[i - 1]] if follow[i] else noise[i]
    return out


def entropy_bound(vocab: int = VOCAB, p_follow: float = P_FOLLOW) -> float:
    """The chain's conditional entropy (nats): the lowest expected loss."""
    p_succ = p_follow + (1 - p_follow) / vocab
    p_other = (1 - p_follow) / vocab
    return float(-(p_succ * np.log(p_succ) + (vocab - 1) * p_other * np.log(p_other)))


if __name__ == "__main__":
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokens.npy")
    np.save(path, markov_tokens(TOKENS))
    print(f"wrote {path} (entropy bound {entropy_bound():.3f} nats)")
