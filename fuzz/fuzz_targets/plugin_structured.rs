//! Valid WebAssembly the loader must judge: core modules generated with
//! many memories, tables, imports and large sections, given as they are or
//! inside components nested a few levels deep.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use wasm_encoder::{
    Component, ComponentSectionId, InstanceSection, NestedComponentSection, RawSection,
};

/// How the generated core module is handed to the loader.
#[derive(Debug, Arbitrary)]
struct Shape {
    /// Inside a component (else the bare core module).
    component: bool,
    /// Components around the innermost one.
    nesting: u8,
    /// The innermost component instantiates the module (when it imports
    /// nothing).
    instantiate: bool,
}

fn module(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let mut config = wasm_smith::Config::arbitrary(u)?;
    config.max_memories = config.max_memories.min(4);
    config.max_tables = config.max_tables.min(4);
    config.max_imports = config.max_imports.min(32);
    config.max_funcs = config.max_funcs.min(64);
    config.multi_value_enabled = true;
    config.memory64_enabled = false;
    config.threads_enabled = false;
    config.exceptions_enabled = false;
    Ok(wasm_smith::Module::new(config, u)?.to_bytes())
}

fn component(module: &[u8], instantiate: bool, nesting: u8) -> Vec<u8> {
    let mut inner = Component::new();
    inner.section(&RawSection {
        id: ComponentSectionId::CoreModule as u8,
        data: module,
    });
    if instantiate {
        let mut instances = InstanceSection::new();
        instances.instantiate(0, std::iter::empty::<(&str, wasm_encoder::ModuleArg)>());
        inner.section(&instances);
    }
    for _ in 0..nesting % 8 {
        let mut outer = Component::new();
        outer.section(&NestedComponentSection(&inner));
        inner = outer;
    }
    inner.finish()
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(shape) = Shape::arbitrary(&mut u) else {
        return;
    };
    let Ok(module) = module(&mut u) else {
        return;
    };
    let bytes = if shape.component {
        let imports = wasmparser::Parser::new(0)
            .parse_all(&module)
            .any(|p| matches!(p, Ok(wasmparser::Payload::ImportSection(s)) if s.count() > 0));
        component(&module, shape.instantiate && !imports, shape.nesting)
    } else {
        module
    };
    sluice::fuzzing::plugin(&bytes);
});
