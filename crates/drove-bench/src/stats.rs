//! Pearson's chi-square test against equal shares, with the p-value from the regularized
//! upper incomplete gamma function (Numerical Recipes `gammq`: series below `a + 1`,
//! Lentz continued fraction above).

use crate::report::ChiSquare;

/// Chi-square goodness of fit of `counts` against a uniform split (`dof = k - 1`).
/// `None` with fewer than two categories or no observations.
pub fn chi_square_uniform(counts: &[u64]) -> Option<ChiSquare> {
    let k = counts.len();
    let total: u64 = counts.iter().sum();
    if k < 2 || total == 0 {
        return None;
    }
    let expected = total as f64 / k as f64;
    let statistic: f64 = counts
        .iter()
        .map(|&o| {
            let d = o as f64 - expected;
            d * d / expected
        })
        .sum();
    let dof = (k - 1) as u32;
    Some(ChiSquare {
        statistic,
        dof,
        p_value: chi_square_sf(statistic, dof),
    })
}

/// P(X ≥ x) for X ~ χ²(dof): the p-value of a chi-square statistic.
pub fn chi_square_sf(x: f64, dof: u32) -> f64 {
    if dof == 0 || x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    gamma_q(dof as f64 / 2.0, x / 2.0)
}

/// Regularized upper incomplete gamma Q(a, x) = Γ(a, x) / Γ(a), for a > 0, x ≥ 0.
fn gamma_q(a: f64, x: f64) -> f64 {
    if x < a + 1.0 {
        (1.0 - gamma_p_series(a, x)).clamp(0.0, 1.0)
    } else {
        gamma_q_fraction(a, x).clamp(0.0, 1.0)
    }
}

const EPS: f64 = 1e-15;
/// Both expansions converge in O(sqrt(a)) terms; this bound is far beyond any dof here.
const MAX_ITER: usize = 10_000;

fn gamma_p_series(a: f64, x: f64) -> f64 {
    let mut ap = a;
    let mut term = 1.0 / a;
    let mut sum = term;
    for _ in 0..MAX_ITER {
        ap += 1.0;
        term *= x / ap;
        sum += term;
        if term.abs() < sum.abs() * EPS {
            break;
        }
    }
    sum * (-x + a * x.ln() - ln_gamma(a)).exp()
}

fn gamma_q_fraction(a: f64, x: f64) -> f64 {
    // Tiny keeps the modified Lentz recurrences away from division by zero.
    const TINY: f64 = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..MAX_ITER {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < EPS {
            break;
        }
    }
    (-x + a * x.ln() - ln_gamma(a)).exp() * h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9: ~15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1-x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol * b.abs().max(1e-300), "{a} vs {b}");
    }

    #[test]
    fn ln_gamma_known() {
        assert!(ln_gamma(1.0).abs() < 1e-14);
        close(ln_gamma(5.0), 24f64.ln(), 1e-13);
        close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-13);
        close(ln_gamma(100.0), 359.134_205_369_575, 1e-12);
    }

    #[test]
    fn chi_square_sf_known_values() {
        // Reference values from the closed forms (even dof: exp(-x/2)·Σ (x/2)^k/k!;
        // odd dof: erfc(sqrt(x/2)) + exp(-x/2)·Σ (x/2)^(k-1/2)/Γ(k+1/2)).
        close(chi_square_sf(3.841_458_820_694_124, 1), 0.05, 1e-9);
        close(chi_square_sf(10.0, 2), (-5.0f64).exp(), 1e-12); // dof 2 is exp(-x/2)
        close(chi_square_sf(5.991_464_547_107_979, 2), 0.05, 1e-9);
        close(chi_square_sf(20.0, 10), 0.029_252_688_076_961_075, 1e-9);
        close(chi_square_sf(1.0, 3), 0.801_251_956_901_200_8, 1e-9);
        close(chi_square_sf(100.0, 50), 3.454_931_382_984_864e-5, 1e-8);
        close(chi_square_sf(0.5, 1), 0.479_500_122_186_953_5, 1e-9);
        assert_eq!(chi_square_sf(0.0, 4), 1.0);
        assert!(chi_square_sf(1e6, 2) < 1e-300 || chi_square_sf(1e6, 2) == 0.0);
    }

    #[test]
    fn uniform_test() {
        let c = chi_square_uniform(&[100, 100, 100]).unwrap();
        assert_eq!(c.statistic, 0.0);
        assert_eq!(c.dof, 2);
        assert_eq!(c.p_value, 1.0);
        // (60-50)^2/50 + (40-50)^2/50 = 4, dof 1 → p = 0.0455003
        let c = chi_square_uniform(&[60, 40]).unwrap();
        close(c.statistic, 4.0, 1e-12);
        close(c.p_value, 0.045_500_263_896_358_41, 1e-9);
        assert!(chi_square_uniform(&[5]).is_none());
        assert!(chi_square_uniform(&[0, 0]).is_none());
    }
}
