//! Which of a component's exports a call can go through: `handle`, which
//! every handler has, or the optional `handle-batch` and `handle-packed`.
//! The optional ones are looked up, and their types checked, once, when the
//! plugin is loaded, so that instances need not check them again.

use std::path::Path;

use wasmtime::component::types::{ComponentItem, Type};
use wasmtime::component::{Component, ComponentExportIndex};

use crate::wasm::contract;

/// Which of a module's exports a call goes through. Every one must do what
/// one `handle` call per message would; they differ in cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryPoint {
    /// `handle`: one call per message.
    Handle,
    /// `handle-batch`: several messages of a partition per call, each string
    /// and byte list copied into the guest on its own.
    Batch,
    /// `handle-packed`: several messages per call, copied into the guest as
    /// one buffer, with the results copied back as one buffer.
    Packed,
}

impl EntryPoint {
    /// The export's name.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryPoint::Handle => "handle",
            EntryPoint::Batch => "handle-batch",
            EntryPoint::Packed => "handle-packed",
        }
    }
}

/// The function `function` of the component's export of the contract's
/// interface `interface`, at a compatible contract version, with its type.
fn optional_export(
    component: &Component,
    interface: &str,
    function: &str,
) -> Option<(ComponentExportIndex, ComponentItem)> {
    let prefix = format!("{}/{interface}@", contract::PACKAGE);
    let engine = component.engine();
    let ty = component.component_type();
    let (name, item) = ty.exports(engine).find(|(name, _)| {
        name.strip_prefix(&prefix)
            .is_some_and(contract::is_compatible)
    })?;
    let ComponentItem::ComponentInstance(exported) = item.ty else {
        return None;
    };
    let func = exported.get_export(engine, function)?.ty;
    let instance = component.get_export_index(None, name)?;
    let index = component.get_export_index(Some(&instance), function)?;
    Some((index, func))
}

/// `handle-packed`, if the component exports it with the contract's type:
/// one `list<u8>` in, one `list<u8>` out. Checked here, once, so that
/// instances need not check it again.
pub(super) fn packed_export(path: &Path, component: &Component) -> Option<ComponentExportIndex> {
    let (index, item) = optional_export(component, "packed", "handle-packed")?;
    let fits = signature(&item).is_some_and(|(params, results)| {
        list_of(&params, &[Type::U8]) && list_of(&results, &[Type::U8])
    });
    if !fits {
        tracing::warn!(
            module = %path.display(),
            "handle-packed is not `func(messages: list<u8>) -> list<u8>` as the contract has \
             it, so it is not called; rebuild the module with the current SDK"
        );
        return None;
    }
    Some(index)
}

/// `handle-batch`, if the component exports it with the contract's type: a
/// list of what `handle` takes in, a list of what `handle` returns out.
/// Checked here, once, against the component's own `handle`, whose type is
/// checked against the contract on the module's first instance
/// (`Runtime::load_file`), so that instances need not check `handle-batch`
/// again.
pub(super) fn batch_export(path: &Path, component: &Component) -> Option<ComponentExportIndex> {
    let (index, item) = optional_export(component, "batch", "handle-batch")?;
    let (_, handle) = optional_export(component, "handler", "handle")?;
    let fits = match (signature(&item), signature(&handle)) {
        (Some((params, results)), Some((handle_params, handle_results))) => {
            list_of(&params, &handle_params) && list_of(&results, &handle_results)
        }
        _ => false,
    };
    if !fits {
        tracing::warn!(
            module = %path.display(),
            "handle-batch has another signature than the contract's \
             (`func(msgs: list<message>) -> list<result<list<output>, handler-error>>`), \
             so it is not called; rebuild the module with the current SDK"
        );
        return None;
    }
    Some(index)
}

/// The parameter and result types of `item`, if it is a function.
fn signature(item: &ComponentItem) -> Option<(Vec<Type>, Vec<Type>)> {
    match item {
        ComponentItem::ComponentFunc(func) => Some((
            func.params().map(|(_, ty)| ty).collect(),
            func.results().collect(),
        )),
        _ => None,
    }
}

/// Whether `list` is one list type whose elements are `element`, one type.
fn list_of(list: &[Type], element: &[Type]) -> bool {
    matches!((list, element), ([Type::List(list)], [element]) if list.ty() == *element)
}
