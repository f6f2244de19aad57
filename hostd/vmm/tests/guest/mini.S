/*
 * mini: the VMM's own test payload (32-bit PVH entry, no SSE, no paging), for the tests that
 * exercise VMM mechanics rather than what the guest sees. Loaded at 1 MiB by the ELF wrapper
 * in tests/common/mod.rs, which assembles this file with binutils (`as --32`, then
 * `ld -m elf_i386 -Ttext 0x100000 --oformat binary`) when the tests run.
 * Console: prints "mini: up", then echoes every byte. Commands (one upper-case byte each, so
 * lower-case text is only echoed):
 *   T: prints "ticks=<8 hex digits>" (a counter of the idle loop)
 *   R: i8042 reset      O: ACPI S5 power-off      I: ignore the power button
 *   X: debug exit 3
 * Power button (PM1a PWRBTN_STS): prints "mini: power button" and powers off (S5), or
 * "mini: power button ignored" after `I`.
 */
    .code32
    .globl _start
_start:
    mov $0x9f000, %esp
    mov $banner, %esi
    call puts
idle:
    incl ticks
    mov $0x3fd, %dx
    in %dx, %al
    test $1, %al
    jz power_button
    mov $0x3f8, %dx
    in %dx, %al
    call putc
    cmp $0x54, %al          /* T */
    je cmd_ticks
    cmp $0x52, %al          /* R */
    je cmd_reset
    cmp $0x4f, %al          /* O */
    je cmd_off
    cmp $0x49, %al          /* I */
    je cmd_ignore
    cmp $0x58, %al          /* X */
    je cmd_exit
power_button:
    mov $0x600, %dx
    in %dx, %ax
    test $0x100, %ax
    jz idle
    mov $0x100, %ax
    out %ax, %dx            /* write-one-to-clear PWRBTN_STS */
    cmpb $0, ignore
    jne 1f
    mov $msg_power, %esi
    call puts
    jmp cmd_off
1:  mov $msg_ignored, %esi
    call puts
    jmp idle

cmd_ticks:
    mov $msg_ticks, %esi
    call puts
    mov ticks, %ebx
    mov $8, %ecx
2:  rol $4, %ebx
    mov %ebx, %eax
    and $0xf, %eax
    mov hexdigits(%eax), %al
    call putc
    loop 2b
    mov $0x0a, %al
    call putc
    jmp idle
cmd_reset:
    mov $0xfe, %al
    out %al, $0x64
    jmp idle
cmd_off:
    mov $0x604, %dx
    mov $0x3400, %ax        /* SLP_EN | SLP_TYP=5 */
    out %ax, %dx
3:  hlt
    jmp 3b
cmd_ignore:
    movb $1, ignore
    jmp idle
cmd_exit:
    mov $3, %al
    out %al, $0xf4
    jmp 3b

/* putc: %al to COM1 once the transmitter is empty. */
putc:
    push %edx
    push %eax
    mov $0x3fd, %dx
4:  in %dx, %al
    test $0x20, %al
    jz 4b
    pop %eax
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret
/* puts: the NUL-terminated string at %esi. */
puts:
    lodsb
    test %al, %al
    jz 5f
    call putc
    jmp puts
5:  ret

banner:      .asciz "mini: up\n"
msg_power:   .asciz "mini: power button\n"
msg_ignored: .asciz "mini: power button ignored\n"
msg_ticks:   .asciz "\nticks="
hexdigits:   .ascii "0123456789abcdef"
    .align 4
ticks:  .long 0
ignore: .byte 0
