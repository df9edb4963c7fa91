"""A fail verdict's line names the worst element and prints numbers that visibly differ (issue 24).

Every expected text below is worked out by hand from the arrays and tolerances given."""

from __future__ import annotations

import numpy as np

from bnconform.judging.compare import compare_output, distinct_texts


def _line(expected, got, rtol, atol, dtype="float64") -> str:
    found = compare_output(0, "y", np.array(expected), got, {"rtol": rtol, "atol": atol}, dtype)
    assert found is not None
    return found.line()


def test_the_line_names_the_far_off_element_not_the_first():
    """[0,0] is off by 1e-7 against an allowed 1e-9 * 0.354344 (outside, barely; equal at 6 digits);
    [0,1] is off by 1e-10 against an allowed 1e-9 (inside); [1,0] is off by 0.5 (far off)."""
    line = _line([[0.354344, 1.0], [2.0, 0.5]], [[0.3543441, 1.0000000001], [2.5, 0.5]], 1e-9, 0.0)
    assert line.startswith("step 0: y[1,0]=2.5, but should be 2 (outside tolerance; 2 of 4 elements differ; "
                           "max abs err 0.5, max rel err 0.25, "), line


def test_numbers_close_together_get_the_digits_that_tell_them_apart():
    """0.3543441 and 0.354344 agree to 6 significant digits; the 7th tells them apart."""
    line = _line([0.354344], [0.3543441], 1e-9, 0.0)
    assert line.startswith("step 0: y[0]=0.3543441, but should be 0.354344 (outside tolerance; 1 of 1 elements"), line


def test_neighbouring_doubles_are_printed_with_17_digits():
    """1 + 2**-52 is the double after 1: 1.0000000000000002 to 17 significant digits."""
    assert distinct_texts(1.0 + 2.0 ** -52, 1.0) == ("1.0000000000000002", "1")
    assert distinct_texts(0.5, 0.5) == ("0.5", "0.5")


def test_the_worst_is_the_largest_margin_over_the_tolerance():
    """rtol 1e-3, atol 0: 1002 vs 1000 is 2 off against 1 allowed (margin 1); 0.002 vs 0.001 is
    0.001 off against 1e-6 allowed (margin 0.000999). The margin, not the ratio, ranks them."""
    line = _line([[1000.0, 0.001]], [[1002.0, 0.002]], 1e-3, 0.0)
    assert line.startswith("step 0: y[0,0]=1002, but should be 1000 (outside tolerance; 2 of 2 elements differ; "), line


def test_a_nan_where_a_number_is_expected_is_the_worst():
    """y[0] is 0.5 off; y[1] is NaN instead of 2: NaN outranks any finite error."""
    line = _line([1.0, 2.0], [1.5, np.nan], 1e-6, 1e-6)
    assert line.startswith("step 0: y[1]=nan, but should be 2 (NaN position differs; 2 of 2 elements differ; "
                           "max abs err 0.5, "), line


def test_a_wrong_infinity_is_reported_with_its_sign():
    """+inf expected at [0]; -inf received there and 3.5 for 3 at [1]: the infinity is the worst."""
    line = _line([np.inf, 3.0], [-np.inf, 3.5], 1e-6, 1e-6)
    assert line.startswith("step 0: y[0]=-inf, but should be inf (outside tolerance; 2 of 2 elements differ; "), line


def test_a_scalar_output_has_no_index():
    assert _line(0.25, 0.75, 1e-6, 1e-6).startswith("step 0: y=0.75, but should be 0.25 (outside tolerance; 1 of 1 ")
