//! Coupon codes: 12 random characters from a 32-letter alphabet without
//! 0 / O / 1 / I (60 bits of randomness, read aloud without confusion),
//! then a check character so that any single mistyped character and any
//! swap of two neighbours is caught before a lookup.
//!
//! The check is Damm's scheme over the field of 32 elements: the running
//! value is `2·r + c` (field arithmetic, modulus x⁵ + x² + 1) and a code is
//! valid when it ends at 0. Each step is a bijection in `r`, so one changed
//! character always changes the end; two swapped neighbours `x, y` give
//! `4r + 2x + y` against `4r + 2y + x`, equal only when `3·(x + y) = 0`,
//! that is when `x = y`. (Luhn mod 32, tried first, misses `2`↔`Z` swaps.)
//! Shown in groups of four: `K7QM-9XWD-3HTN-R`.

/// The alphabet: digits 2-9 and letters without I and O.
pub const ALPHABET: &[u8; 32] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";

/// Random characters in a code.
pub const RANDOM_CHARS: usize = 12;

/// Why a typed code is not a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeError {
    /// Not 13 characters once separators are removed.
    Length,
    /// A character outside the alphabet (0, O, 1, I, punctuation…).
    Character,
    /// The check character does not match: a typo.
    Check,
}

impl CodeError {
    /// A message for people.
    pub fn describe(self) -> &'static str {
        match self {
            CodeError::Length => "a coupon code has 13 characters (dashes and spaces are ignored)",
            CodeError::Character => "a coupon code uses only 2-9 and A-Z without I and O",
            CodeError::Check => "the code has a typo: its check character does not match",
        }
    }
}

fn value(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|a| *a == c).map(|p| p as u32)
}

/// Multiplication in GF(32) with modulus x⁵ + x² + 1.
fn field_mul(mut a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    while b != 0 {
        if b & 1 != 0 {
            product ^= a;
        }
        b >>= 1;
        a <<= 1;
        if a & 0b10_0000 != 0 {
            a ^= 0b10_0101;
        }
    }
    product
}

/// The running check value after `values`.
fn run(values: &[u32]) -> u32 {
    values.iter().fold(0, |r, v| field_mul(2, r) ^ v)
}

/// The check character value that brings `body` to 0.
fn check_value(body: &[u32]) -> u32 {
    field_mul(2, run(body))
}

/// A new code from `random` bytes (at least 12; each byte's low 5 bits are
/// used, so 12 bytes carry 60 bits).
pub fn from_random(random: &[u8; RANDOM_CHARS]) -> String {
    let body: Vec<u32> = random.iter().map(|b| u32::from(b & 31)).collect();
    let check = check_value(&body);
    body.iter()
        .chain(std::iter::once(&check))
        .map(|v| ALPHABET[*v as usize] as char)
        .collect()
}

/// A new random code.
pub fn generate() -> Result<String, getrandom::Error> {
    let mut random = [0u8; RANDOM_CHARS];
    getrandom::fill(&mut random)?;
    Ok(from_random(&random))
}

/// The canonical form of a typed code: upper case, separators removed,
/// alphabet and check character verified.
pub fn parse(typed: &str) -> Result<String, CodeError> {
    let code: Vec<u8> = typed
        .bytes()
        .filter(|b| !matches!(b, b'-' | b' '))
        .map(|b| b.to_ascii_uppercase())
        .collect();
    if code.len() != RANDOM_CHARS + 1 {
        return Err(CodeError::Length);
    }
    let values: Option<Vec<u32>> = code.iter().map(|c| value(*c)).collect();
    let values = values.ok_or(CodeError::Character)?;
    if run(&values) != 0 {
        return Err(CodeError::Check);
    }
    Ok(String::from_utf8_lossy(&code).into_owned())
}

/// A code in groups of four for printing and reading aloud.
pub fn display(code: &str) -> String {
    code.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_read_back_in_any_case_with_separators() {
        let code = from_random(&[7, 200, 13, 255, 0, 31, 64, 99, 150, 3, 18, 77]);
        assert_eq!(code.len(), 13);
        let shown = display(&code);
        assert_eq!(shown.len(), 16);
        assert_eq!(parse(&shown.to_lowercase()), Ok(code.clone()));
        assert_eq!(parse(&code[..12]), Err(CodeError::Length));
        let mut with_o = code.clone().into_bytes();
        with_o[0] = b'O';
        assert_eq!(
            parse(&String::from_utf8(with_o).expect("ascii")),
            Err(CodeError::Character)
        );
    }

    #[test]
    fn generated_codes_differ() {
        let a = generate().expect("random");
        let b = generate().expect("random");
        assert_ne!(a, b);
        assert!(parse(&a).is_ok());
    }

    proptest! {
        /// Every single-character typo is caught by the check character.
        #[test]
        fn any_single_typo_is_caught(
            random in proptest::array::uniform12(any::<u8>()),
            at in 0usize..13,
            by in 1usize..32,
        ) {
            let code = from_random(&random).into_bytes();
            let mut typo = code.clone();
            let v = value(typo[at]).expect("alphabet") as usize;
            typo[at] = ALPHABET[(v + by) % 32];
            prop_assert_eq!(parse(&String::from_utf8(typo).expect("ascii")), Err(CodeError::Check));
        }

        /// Swapping two different neighbouring characters is caught too.
        #[test]
        fn neighbour_swaps_are_caught(
            random in proptest::array::uniform12(any::<u8>()),
            at in 0usize..12,
        ) {
            let code = from_random(&random).into_bytes();
            prop_assume!(code[at] != code[at + 1]);
            let mut swapped = code.clone();
            swapped.swap(at, at + 1);
            let swapped = String::from_utf8(swapped).expect("ascii");
            prop_assert!(parse(&swapped).is_err(), "{swapped} passed");
        }
    }
}
