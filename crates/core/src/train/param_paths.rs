//! Parameters by path, for any burn module: the gradient buffer, the optimizer, the data-parallel broadcast and
//! the checkpoints all name a parameter by its field path in the module tree (`layers.0.self_attn.q_proj.weight.Dense`),
//! as burn's visitors report it, so they work on whatever module an objective trains — a causal LM, a model with a
//! value head, two models side by side — without a list of its parameters.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Shape, Tensor, TensorData};

use crate::hf::HostTensor;

/// The path of the parameter being visited, kept from burn's enter/exit calls.
#[derive(Default)]
pub struct PathStack {
    parts: Vec<String>,
}

impl PathStack {
    pub fn enter(&mut self, name: &str) {
        self.parts.push(name.to_string());
    }

    pub fn exit(&mut self) {
        self.parts.pop();
    }

    /// The current path, dot-joined.
    pub fn path(&self) -> String {
        self.parts.join(".")
    }
}

/// Calls `f(path, value, is_matrix)` for every float parameter of `module` that requires a gradient (frozen
/// parameters and constants, such as a LoRA base or 4-bit codes, are left out), with its value flattened.
/// Matrices are told apart because weight decay applies to them only (transformers' Trainer exempts biases and
/// norm weights).
pub fn visit_trainable<B: Backend, M: Module<B>>(module: &M, f: impl FnMut(&str, Tensor<B, 1>, bool)) {
    struct Visitor<F> {
        stack: PathStack,
        f: F,
    }
    impl<B: Backend, F: FnMut(&str, Tensor<B, 1>, bool)> ModuleVisitor<B> for Visitor<F> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.stack.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            if value.is_require_grad() {
                (self.f)(&self.stack.path(), flatten(value), D > 1);
            }
        }
    }
    module.visit(&mut Visitor { stack: PathStack::default(), f });
}

/// Calls `f(path, gradient)` for every parameter of `module` that `grads` holds a gradient for, flattened.
pub fn visit_gradients<A: AutodiffBackend, M: Module<A>>(
    module: &M,
    grads: &A::Gradients,
    f: impl FnMut(&str, Tensor<A::InnerBackend, 1>),
) {
    struct Visitor<'g, A: AutodiffBackend, F> {
        stack: PathStack,
        grads: &'g A::Gradients,
        f: F,
    }
    impl<A: AutodiffBackend, F: FnMut(&str, Tensor<A::InnerBackend, 1>)> ModuleVisitor<A> for Visitor<'_, A, F> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.stack.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
            // The gradient belongs to the parameter's own node: it is read before any reshape.
            if let Some(grad) = param.val().grad(self.grads) {
                (self.f)(&self.stack.path(), flatten(grad));
            }
        }
    }
    module.visit(&mut Visitor::<A, _> { stack: PathStack::default(), grads, f });
}

/// The paths of `module`'s trainable parameters, in visiting order.
pub fn trainable_paths<B: Backend, M: Module<B>>(module: &M) -> Vec<String> {
    let mut paths = Vec::new();
    visit_trainable(module, |path, _, _| paths.push(path.to_string()));
    paths
}

/// Replaces every float parameter of `module` that requires a gradient with `update(path, value, is_matrix)`
/// when that returns a value (the parameter keeps its id and its need for gradients); others are kept.
pub fn map_trainable<B: Backend, M: Module<B>>(
    module: M,
    update: impl FnMut(&str, Tensor<B, 1>, bool) -> Option<Tensor<B, 1>>,
) -> M {
    struct Mapper<F> {
        stack: PathStack,
        update: F,
    }
    impl<B: Backend, F: FnMut(&str, Tensor<B, 1>, bool) -> Option<Tensor<B, 1>>> ModuleMapper<B> for Mapper<F> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.stack.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let value = param.val();
            if !value.is_require_grad() {
                return param;
            }
            let dims = value.dims();
            // Detached first: the flattening is not recorded in the autodiff graph.
            match (self.update)(&self.stack.path(), flatten(value.detach()), D > 1) {
                Some(new) => Param::initialized(param.id, new.reshape(dims).require_grad()),
                None => param,
            }
        }
    }
    module.map(&mut Mapper { stack: PathStack::default(), update })
}

/// Replaces each float parameter that `values` names (by path, taken out of it) with a tensor of that shape and
/// those values on the parameter's device, keeping its id and its need for gradients (ZeRO stage 3 filling a
/// released parameter with its gathered value).
pub fn fill_params<B: Backend, M: Module<B>>(module: M, values: &mut BTreeMap<String, HostTensor>) -> M {
    struct Mapper<'v> {
        stack: PathStack,
        values: &'v mut BTreeMap<String, HostTensor>,
    }
    impl<B: Backend> ModuleMapper<B> for Mapper<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.stack.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let Some(host) = self.values.remove(&self.stack.path()) else { return param };
            let value = param.val();
            let n = host.values.len();
            let filled = Tensor::<B, 1>::from_data(TensorData::new(host.values, [n]), &value.device())
                .reshape(Shape::from(host.shape));
            Param::initialized(param.id, if value.is_require_grad() { filled.require_grad() } else { filled })
        }
    }
    module.map(&mut Mapper { stack: PathStack::default(), values })
}

/// Replaces each trainable parameter for which `release(path)` holds with an empty tensor (no element, the same
/// rank), keeping its id and its need for gradients: ZeRO stage 3's parameters between their uses. Returns the
/// module and each released parameter's shape, by path.
pub fn release_params<B: Backend, M: Module<B>>(
    module: M,
    release: impl Fn(&str) -> bool,
) -> (M, BTreeMap<String, Vec<usize>>) {
    struct Mapper<F> {
        stack: PathStack,
        release: F,
        shapes: BTreeMap<String, Vec<usize>>,
    }
    impl<B: Backend, F: Fn(&str) -> bool> ModuleMapper<B> for Mapper<F> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.stack.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let value = param.val();
            let path = self.stack.path();
            if !value.is_require_grad() || !(self.release)(&path) {
                return param;
            }
            let dims = value.dims();
            if dims.iter().product::<usize>() > 0 {
                self.shapes.insert(path, dims.to_vec());
            }
            let empty = Tensor::<B, D>::zeros(Shape::new([0; D]), &value.device());
            Param::initialized(param.id, empty.require_grad())
        }
    }
    let mut mapper = Mapper { stack: PathStack::default(), release, shapes: BTreeMap::new() };
    let module = module.map(&mut mapper);
    (module, mapper.shapes)
}

/// Replaces every float parameter of `module` (trainable or frozen) with `replace(value)`, keeping its id and
/// whether it requires a gradient (a data-parallel broadcast of rank 0's weights).
pub fn map_floats<B: Backend, M: Module<B>>(module: M, replace: impl FnMut(Tensor<B, 1>) -> Tensor<B, 1>) -> M {
    struct Mapper<F>(F);
    impl<B: Backend, F: FnMut(Tensor<B, 1>) -> Tensor<B, 1>> ModuleMapper<B> for Mapper<F> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let value = param.val();
            let trainable = value.is_require_grad();
            let dims = value.dims();
            let new = (self.0)(flatten(value.detach())).reshape(dims);
            Param::initialized(param.id, if trainable { new.require_grad() } else { new })
        }
    }
    module.map(&mut Mapper(replace))
}

pub(crate) fn flatten<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    let n = t.shape().num_elements();
    t.reshape([n])
}

/// Calls `f(value)` for every float parameter of `module`, trainable or frozen, flattened, in visiting order.
pub fn visit_floats<B: Backend, M: Module<B>>(module: &M, f: impl FnMut(Tensor<B, 1>)) {
    struct Visitor<F>(F);
    impl<B: Backend, F: FnMut(Tensor<B, 1>)> ModuleVisitor<B> for Visitor<F> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            (self.0)(flatten(param.val()));
        }
    }
    module.visit(&mut Visitor(f));
}
