use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: keyfleet_hub::memory::HubAllocator = keyfleet_hub::memory::HubAllocator;

fn main() -> ExitCode {
    keyfleet_hub::main_with(std::env::args_os())
}
