import numpy as np
import pytest

from equal import as_generator, check_embeddings, l2_normalize


def test_l2_normalize_unit_rows(rng: np.random.Generator) -> None:
    X = rng.normal(size=(5, 3))
    Y = l2_normalize(X)
    assert Y.dtype == np.float32 and Y.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1.0, atol=1e-6)


def test_check_embeddings_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        check_embeddings(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        check_embeddings(np.array([[np.nan, 1.0]]), normalized=False)
    with pytest.raises(ValueError, match="row 0 has norm 2"):
        check_embeddings(np.array([[2.0, 0.0]]))
    out = check_embeddings(np.array([[1.0, 0.0]], dtype=np.float64))
    assert out.dtype == np.float32


def test_as_generator_seeding() -> None:
    a = as_generator(3).integers(0, 1000, 5)
    b = as_generator(3).integers(0, 1000, 5)
    np.testing.assert_array_equal(a, b)
    g = np.random.default_rng(1)
    assert as_generator(g) is g
    with pytest.raises(TypeError):
        as_generator("seed")  # type: ignore[arg-type]
