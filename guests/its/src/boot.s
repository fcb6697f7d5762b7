// Entry points, identity map, stacks and exception vectors of the ITS test
// guest. The file starts with the arm64 Image header, so Caravel (or any
// arm64 Linux loader) boots it like a kernel: x0 = the device tree.

.section .text.head, "ax"
.global _start
_start:
    b       primary_entry
    .long   0
    .quad   0                       // text_offset: at the start of RAM
    .quad   __image_size            // bytes used, bss included
    .quad   0xa                     // little endian, 4 KiB pages, anywhere
    .quad   0
    .quad   0
    .quad   0
    .long   0x644d5241              // "ARM\x64"
    .long   0

primary_entry:
    mov     x19, x0                 // the device tree
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
1:  cmp     x1, x2
    b.hs    2f
    str     xzr, [x1], #8
    b       1b
2:  // Identity map in 1 GiB blocks: 0-1 GiB device (GIC, UART, PCI),
    // 1-4 GiB normal write-back memory (RAM starts at 1 GiB).
    ldr     x1, =page_table
    ldr     x2, =0x0060000000000401
    str     x2, [x1]
    ldr     x2, =0x0000000040000705
    str     x2, [x1, #8]
    ldr     x2, =0x0000000080000705
    str     x2, [x1, #16]
    ldr     x2, =0x00000000c0000705
    str     x2, [x1, #24]
    dc      ivac, x1                // written with the MMU off
    dsb     sy
    mov     x0, #0
    b       cpu_start

// PSCI CPU_ON lands here with x0 = the context ID = the CPU's index.
.global secondary_entry
secondary_entry:
    mov     x19, #0
cpu_start:
    msr     tpidr_el1, x0
    ldr     x1, =0xff00             // attr 0 Device-nGnRnE, attr 1 Normal WB
    msr     mair_el1, x1
    ldr     x1, =0x200803519        // T0SZ 25, WB walks, inner shareable, 4 KiB, no TTBR1, 40-bit PA
    msr     tcr_el1, x1
    ldr     x1, =page_table
    msr     ttbr0_el1, x1
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    mrs     x1, sctlr_el1
    orr     x1, x1, #(1 << 0)       // M
    orr     x1, x1, #(1 << 2)       // C
    orr     x1, x1, #(1 << 12)      // I
    msr     sctlr_el1, x1
    isb
    ldr     x1, =vectors
    msr     vbar_el1, x1
    isb
    ldr     x1, =stacks
    add     x2, x0, #1
    lsl     x2, x2, #14             // 16 KiB per CPU
    add     sp, x1, x2
    mov     x1, x19
    bl      rust_entry
3:  wfi
    b       3b

.section .text
.balign 2048
vectors:
.rept 5                             // EL1t (4), EL1h synchronous
    .balign 0x80
    b       unexpected_entry
.endr
    .balign 0x80                    // EL1h IRQ
    b       irq_entry
.rept 10                            // EL1h FIQ/SError, lower ELs
    .balign 0x80
    b       unexpected_entry
.endr

unexpected_entry:
    mrs     x0, esr_el1
    mrs     x1, elr_el1
    mrs     x2, far_el1
    bl      unexpected_exception
4:  wfi
    b       4b

irq_entry:
    sub     sp, sp, #176
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x29, [sp, #144]
    str     x30, [sp, #160]
    bl      irq_handler
    ldr     x30, [sp, #160]
    ldp     x18, x29, [sp, #144]
    ldp     x16, x17, [sp, #128]
    ldp     x14, x15, [sp, #112]
    ldp     x12, x13, [sp, #96]
    ldp     x10, x11, [sp, #80]
    ldp     x8, x9, [sp, #64]
    ldp     x6, x7, [sp, #48]
    ldp     x4, x5, [sp, #32]
    ldp     x2, x3, [sp, #16]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #176
    eret

.section .bss
.balign 4096
page_table:
    .space  4096
.balign 16
stacks:
    .space  8 * 16384
