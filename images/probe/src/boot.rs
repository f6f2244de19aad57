//! PVH entry: the ELF note that names it, the 32-bit start, the switch to long mode, the drop
//! to CPL 3, and the call into Rust (`probe_main`).
//!
//! The loader (our VMM, or QEMU's PVH option ROM) enters `pvh_start` in 32-bit protected mode
//! with flat 4 GiB segments, paging and interrupts off, and `%ebx` = guest-physical address of
//! `hvm_start_info` (docs/VMM.md, "Boot protocols"). The code below:
//!
//! 1. zeroes `.bss` (Rust statics): a hard reboot may restart the vCPU on memory that still
//!    holds the previous run's values;
//! 2. loads page tables that are built at link time (`.data`, so no loop runs here): 0..4 GiB
//!    identity-mapped with 2 MiB pages, user-accessible, the MMIO hole (3..4 GiB) uncached, so
//!    `peek` can read any 32-bit BAR and the ACPI code any table below 4 GiB;
//! 3. enables PAE, long mode and SSE (Rust code uses SSE registers freely), loads a GDT, an
//!    empty IDT (the probe handles no exception: any fault triple-faults, which docs/VMM.md
//!    defines as a reset) and a TSS whose I/O permission bitmap allows every port, and
//!    far-jumps to 64-bit code;
//! 4. drops to CPL 3 with IOPL 3 (port I/O stays allowed) and calls `probe_main(start_info)`
//!    on a 64 KiB stack.
//!
//! Why CPL 3: on the nested KVM of our development and CI machines (kvm-pvm), guest code at
//! CPL 0 is run by KVM's instruction emulator, which lacks SSE instructions (the compiler emits
//! them for ordinary moves: "KVM internal error. Suberror: 1 ... emulation failure" on
//! `xorps`) and is orders of magnitude slower; guest code at CPL 3 runs natively. On hardware
//! virtualisation (the appliance) both work, and CPL 3 costs nothing: the probe needs no
//! privileged instruction after boot except `hlt`, which it replaces by a pause loop.
//! IOPL 3 alone should allow port I/O at CPL 3, but kvm-pvm also consults the TSS I/O
//! bitmap (an `in` from the igb's I/O BAR raised #GP without it), hence the all-zero bitmap.

core::arch::global_asm!(
    r#"
    .section .note.pvh, "a", @note
    .balign 4
    .long 4                 /* namesz: "Xen\0" */
    .long 8                 /* descsz: the entry as a 64-bit value, like Linux's note */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start
    .balign 4

    .section .text.pvh_start, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    mov %ebx, %esi                  /* hvm_start_info: kept in %esi until probe_main */

    /* 1. Zero .bss. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    /* 2 and 3. CR3, CR4 (PAE, OSFXSR, OSXMMEXCPT), EFER.LME, CR0 (PG, PE, MP; EM off). */
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    and $0xFFFFFFFB, %eax
    or $0x80000003, %eax
    mov %eax, %cr0
    /* The TSS descriptor's base is split across fields: fill it in here. Its type is set
       back to "available" too: `ltr` marks it busy in memory, and a hard reboot that restarts
       the vCPU without reloading the image would otherwise fault on the next `ltr`. */
    movb $0x89, boot_gdt_tss + 5
    mov $boot_tss, %eax
    mov %ax, boot_gdt_tss + 2
    shr $16, %eax
    mov %al, boot_gdt_tss + 4
    mov %ah, boot_gdt_tss + 7
    lgdt boot_gdt_pointer
    lidt boot_idt_pointer
    ljmp $0x08, $long_mode_start

    .code64
long_mode_start:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov $0x28, %eax
    ltr %ax
    /* PVH leaves the stack undefined: build the iretq frame on our own. */
    mov $boot_stack_top, %rsp
    /* 4. iretq to CPL 3: SS, RSP, RFLAGS (IOPL 3, interrupts off), CS, RIP. */
    pushq $0x1b
    pushq $boot_stack_top
    pushq $0x3002
    pushq $0x23
    pushq $user_start
    iretq
user_start:
    mov %esi, %edi                  /* probe_main(start_info), zero-extended */
    call probe_main
1:  pause
    jmp 1b

    .section .data.boot_descriptors, "aw"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff        /* 0x10: data, DPL 0 */
    .quad 0x00cff2000000ffff        /* 0x18: data, DPL 3 (selector 0x1b) */
    .quad 0x00affa000000ffff        /* 0x20: 64-bit code, DPL 3 (selector 0x23) */
boot_gdt_tss:                       /* 0x28: 64-bit TSS, limit 0x2068, base filled in at entry */
    .quad 0x0000890000002068
    .quad 0
boot_gdt_end:
boot_gdt_pointer:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
boot_idt_pointer:
    .word 0                         /* limit 0: no vector is valid */
    .long 0

    /* 64-bit TSS: no stacks (the probe takes no interrupt), and an I/O permission bitmap
       (all zeros: every port allowed, then the 0xff terminator) at offset 0x68. */
    .section .data.boot_tss, "aw"
    .balign 16
boot_tss:
    .fill 0x66, 1, 0
    .word 0x68                      /* I/O map base */
    .fill 8192, 1, 0
    .byte 0xff
    .balign 16

    .section .data.boot_page_tables, "aw"
    .balign 4096
boot_pml4:
    .quad boot_pdpt + 0x7           /* present, writable, user */
    .fill 511, 8, 0
boot_pdpt:
    .quad boot_pd + 0x7
    .quad boot_pd + 0x1000 + 0x7
    .quad boot_pd + 0x2000 + 0x7
    .quad boot_pd + 0x3000 + 0x7
    .fill 508, 8, 0
boot_pd:
    .set probe_page, 0
    .rept 1536                      /* 0..3 GiB: present, writable, user, 2 MiB */
    .quad probe_page + 0x87
    .set probe_page, probe_page + 0x200000
    .endr
    .rept 512                       /* 3..4 GiB, the MMIO hole: also cache disable, write-through */
    .quad probe_page + 0x9f
    .set probe_page, probe_page + 0x200000
    .endr

    .section .stack, "aw", @nobits
    .balign 4096
boot_stack:
    .skip 65536
boot_stack_top:
"#,
    options(att_syntax)
);
