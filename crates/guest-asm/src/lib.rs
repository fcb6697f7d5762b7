//! Guest code written in assembly and embedded in the test binary.
//!
//! [`guest_code!`] assembles instructions with `global_asm!` into a read-only
//! section between two unique labels and exposes them as a byte slice to copy
//! into guest memory. Only general-purpose registers: the compiler never
//! touches this code, so no SSE sneaks in (the PVM host cannot emulate it).
//!
//! ```
//! guest_asm::guest_code!(hello, ".code64", "mov al, 0x41", "out 0x80, al", "hlt");
//! assert_eq!(hello::code(), &[0xb0, 0x41, 0xe6, 0x80, 0xf4]);
//! ```
//!
//! The code is assembled in Intel syntax. Keep it position-independent
//! (relative jumps, RIP-relative data) or compute absolute addresses from
//! the load address; the assembler does not know where it will run.

/// Defines a module `$name` with `fn code() -> &'static [u8]`.
///
/// The symbol names include `$name`, so names must be unique per binary.
#[macro_export]
macro_rules! guest_code {
    ($name:ident, $($line:literal),+ $(,)?) => {
        #[doc = concat!("Guest code `", stringify!($name), "`.")]
        pub mod $name {
            ::core::arch::global_asm!(
                concat!(".pushsection .rodata.guest_code_", stringify!($name), ",\"a\",@progbits"),
                concat!(".globl caravel_guest_", stringify!($name), "_start"),
                concat!(".globl caravel_guest_", stringify!($name), "_end"),
                concat!("caravel_guest_", stringify!($name), "_start:"),
                $($line,)+
                concat!("caravel_guest_", stringify!($name), "_end:"),
                ".code64",
                ".popsection",
            );
            unsafe extern "C" {
                #[link_name = concat!("caravel_guest_", stringify!($name), "_start")]
                static START: u8;
                #[link_name = concat!("caravel_guest_", stringify!($name), "_end")]
                static END: u8;
            }
            /// The assembled bytes.
            pub fn code() -> &'static [u8] {
                let start = &raw const START;
                let end = &raw const END;
                let len = (end as usize).wrapping_sub(start as usize);
                // SAFETY: both labels delimit one contiguous, read-only block
                // emitted by the global_asm! above, with `end` after `start`,
                // and it lives for the whole program.
                unsafe { ::core::slice::from_raw_parts(start, len) }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    guest_code!(
        real_mode,
        ".code16",
        "mov dx, 0x3f8",
        "mov al, 0x42",
        "out dx, al",
        "hlt"
    );
    guest_code!(
        long_mode,
        ".code64",
        "mov rax, 0x1122334455667788",
        "2:",
        "jmp 2b"
    );

    #[test]
    fn assembles_16_and_64_bit_code() {
        assert_eq!(
            real_mode::code(),
            &[0xba, 0xf8, 0x03, 0xb0, 0x42, 0xee, 0xf4]
        );
        assert_eq!(
            long_mode::code(),
            &[0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xeb, 0xfe]
        );
    }
}
