"""The dealer-assisted secure comparison (comparison.py): the DCF keys XOR to [x < alpha] at
every input, the sign gate reads the sign of any shared value in its signed 48-bit range,
and one party's key material does not depend on the secret it encodes."""

from __future__ import annotations

import numpy as np
from scipy import stats

from ferbench.privacy import comparison
from ferbench.privacy import fixed_point as fp
from tests.conftest import CHANCE_P

TOP = (1 << comparison.DOMAIN_BITS) - 1


def low_bits(values) -> np.ndarray:
    return fp.to_ring([int(v) % (TOP + 1) for v in values])


def test_dcf_keys_xor_to_the_comparison_at_every_kind_of_input():
    rng = np.random.default_rng(0)
    alphas = [0, 1, 2, TOP, TOP - 1, 1 << 62, *rng.integers(0, TOP, 30, dtype=np.int64)]
    cases = [(a, x) for a in alphas
             for x in (a - 1, a, a + 1, 0, TOP, int(rng.integers(0, TOP, dtype=np.int64)))]
    alpha, inputs = low_bits([a for a, _ in cases]), low_bits([x for _, x in cases])
    server_keys, client_keys = comparison.generate_dcf(alpha)
    got = (comparison.evaluate_dcf(comparison.SERVER, server_keys, inputs)
           ^ comparison.evaluate_dcf(comparison.CLIENT, client_keys, inputs))
    assert list(got) == [int(x < a) for a, x in zip(alpha, inputs)]


def test_sign_gate_reads_the_sign_of_any_shared_value_in_the_signed_range():
    half = 1 << (comparison.COMPARE_BITS - 1)
    rng = np.random.default_rng(1)
    values = [0, 1, -1, 2, -2, half - 1, -half, half // 2, -half // 2 - 1,
              *rng.integers(-half, half, 50, dtype=np.int64)]
    shared = fp.to_ring(values)
    server_keys, client_keys = comparison.deal_signs(len(values))
    opened = shared + server_keys.mask + client_keys.mask  # each party adds its mask share
    bits = (comparison.sign_share(comparison.SERVER, server_keys, opened)
            ^ comparison.sign_share(comparison.CLIENT, client_keys, opened))
    assert list(bits) == [int(v < 0) for v in values]


def test_one_partys_keys_do_not_depend_on_the_secret_threshold():
    """3000 client keys for alpha = 0 and 3000 for alpha = 2^47 - 1 (the extremes): every
    correction bit column (47 levels x 3, and the final one) and the seed corrections'
    bytes have the same distribution: two-proportion |z| < 5 per column (142 columns, family
    false alarm about 1e-4) and a KS test on the bytes. The control, both keys evaluated
    together at x = 0, tells the two thresholds apart completely."""
    count = 3000
    keys = {}
    for name, alpha in (("low", 0), ("high", TOP)):
        server, client = comparison.generate_dcf(fp.to_ring([alpha] * count))
        keys[name] = (server, client)
    columns = [np.concatenate([k[1].bit_corrections.reshape(count, -1),
                               k[1].final[:, None]], axis=1).astype(float)
               for k in (keys["low"], keys["high"])]
    ones = [c.mean(axis=0) for c in columns]
    pooled = (ones[0] + ones[1]) / 2
    z = (ones[0] - ones[1]) / np.sqrt(pooled * (1 - pooled) * 2 / count)
    assert np.max(np.abs(z)) < 5
    seed_bytes = [k[1].seed_corrections[:, :, 0].ravel() for k in (keys["low"], keys["high"])]
    assert stats.ks_2samp(*seed_bytes).pvalue > CHANCE_P
    zero = fp.to_ring([0] * count)
    together = [comparison.evaluate_dcf(comparison.SERVER, k[0], zero)
                ^ comparison.evaluate_dcf(comparison.CLIENT, k[1], zero)
                for k in (keys["low"], keys["high"])]
    assert together[0].sum() == 0 and together[1].sum() == count


def test_opened_values_are_uniform_whatever_the_shared_value():
    """m = d + r for d = 0 and d = -1 over 4000 gates: KS against each other and against
    uniform pass (r is a fresh uniform mask)."""
    server_keys, client_keys = comparison.deal_signs(8000)
    masks = server_keys.mask + client_keys.mask
    opened = [(masks[:4000] + fp.to_ring([0] * 4000)).astype(float) / fp.MODULUS,
              (masks[4000:] + fp.to_ring([-1] * 4000)).astype(float) / fp.MODULUS]
    assert stats.ks_2samp(*opened).pvalue > CHANCE_P
    assert stats.kstest(opened[1], "uniform").pvalue > CHANCE_P
