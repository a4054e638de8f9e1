//! What detlab's own CPU operations share (the fast conv3d, the fused group norm, the fused
//! deformable-attention sampling): they run only where the backend is burn's `Dispatch` on the
//! Flex device, reached from a generic `B: Backend` by a checked type cast, read their inputs
//! to host memory, and hand their gradients back to burn's autodiff graph.

use std::any::{Any, TypeId};

use burn::Dispatch;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::grads::Gradients;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

/// Whether `A` and `T` are the same type (a generic backend is the one a kernel serves).
pub(crate) fn same_type<A: 'static, T: 'static>() -> bool {
    TypeId::of::<A>() == TypeId::of::<T>()
}

/// Move a value between two names of the same type (checked with [`same_type`] first).
pub(crate) fn cast<A: 'static, T: 'static>(value: A) -> T {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
        .expect("cast between identical types")
}

/// A Dispatch float tensor's data on the host: on the Flex device, the tensor's own buffer
/// where nothing else holds it, a copy otherwise. An op that must keep its input for the
/// backward pass reads it first and keeps `float_from_data` of what it read (the same buffer),
/// rather than a clone of the tensor, which would force the copy.
pub(crate) fn read_f32<const D: usize>(tensor: FloatTensor<Dispatch>) -> TensorData {
    Tensor::<Dispatch, D>::from_primitive(TensorPrimitive::Float(tensor)).into_data()
}

/// The f32 values of host data whose dtype was checked to be f32.
pub(crate) fn f32s(data: &TensorData) -> &[f32] {
    data.as_slice::<f32>()
        .expect("f32 tensor data (dtype checked before)")
}

/// Hand a custom op's gradients to the autodiff graph: the i-th gradient to the i-th parent,
/// where that parent is tracked and the gradient was computed.
pub(crate) fn register_gradients<B: Backend>(
    parents: impl IntoIterator<Item = Option<NodeId>>,
    gradients: impl IntoIterator<Item = Option<FloatTensor<B>>>,
    grads: &mut Gradients,
) {
    for (parent, gradient) in parents.into_iter().zip(gradients) {
        if let (Some(id), Some(gradient)) = (parent, gradient) {
            grads.register::<B>(id, gradient);
        }
    }
}
