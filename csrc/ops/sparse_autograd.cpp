// Autograd of sparse_linear and sparse_matmul, registered at the Autograd key for every backend.
//
// Why C++ and not torch.library.register_autograd: the Python autograd kernel runs on every call that has the
// Autograd key set, i.e. also under torch.no_grad() (everything except inference_mode), and entering Python
// there costs about as much as the whole op at small sizes. Here a call that records no graph goes straight to
// the backend kernel; one that does builds a C++ node (no Python). The derivatives are the same as before:
//   y = x @ W^T + b:  grad_x = g @ W (sparse_linear_backward_input), grad_values = (g^T @ x) at the stored
//   positions (sparse_linear_backward_values), grad_b = sum of g over the batch; col_idx/row_ptr get none.
// sparse_matmul (out[n] = W @ x[n] + b) is sparse_linear on the samples (batch x columns) and reuses the same
// backward ops. The fake (meta) kernels of all four ops stay in sparsecomp/ops.py.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

namespace sparsecomp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const std::optional<at::Tensor>&, int64_t);

// Typed handles, looked up once (the schemas are defined in csrc/sparsecomp.cpp, loaded with this library).
c10::TypedOperatorHandle<ForwardSig> forward_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<ForwardSig>();
}

at::Tensor backward_input(const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& col_idx,
                          const at::Tensor& row_ptr, int64_t in_features) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("sparsecomp::sparse_linear_backward_input", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, int64_t)>();
  return op.call(grad_out, values, col_idx, row_ptr, in_features);
}

at::Tensor backward_values(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& col_idx,
                           const at::Tensor& row_ptr, int64_t in_features) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("sparsecomp::sparse_linear_backward_values", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, int64_t)>();
  return op.call(grad_out, x, col_idx, row_ptr, in_features);
}

// Saves what backward needs: x only for grad_values and values only for grad_x (an activation is not kept
// alive for a gradient nobody asked for).
void save_inputs(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_idx,
                 const at::Tensor& row_ptr, const std::optional<at::Tensor>& bias, int64_t in_features) {
  ctx->save_for_backward({values.requires_grad() ? x : at::Tensor(), x.requires_grad() ? values : at::Tensor(),
                          col_idx, row_ptr});
  ctx->saved_data["in_features"] = in_features;
  ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
}

struct SparseLinearFunction : torch::autograd::Function<SparseLinearFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& values,
                            const at::Tensor& col_idx, const at::Tensor& row_ptr,
                            const std::optional<at::Tensor>& bias, int64_t in_features) {
    save_inputs(ctx, x, values, col_idx, row_ptr, bias, in_features);
    static const auto op = forward_op("sparsecomp::sparse_linear");
    at::AutoDispatchBelowADInplaceOrView below;
    return op.call(x, values, col_idx, row_ptr, bias, in_features);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &values = saved[1], &col_idx = saved[2], &row_ptr = saved[3];
    const int64_t in_features = ctx->saved_data["in_features"].toInt();
    const at::Tensor g = grads[0].contiguous();
    at::Tensor grad_x, grad_values, grad_bias;
    // needs_input_grad counts tensor inputs only: x 0, values 1, col_idx 2, row_ptr 3, bias 4 (when given).
    if (ctx->needs_input_grad(0)) grad_x = backward_input(g, values, col_idx, row_ptr, in_features);
    if (ctx->needs_input_grad(1)) grad_values = backward_values(g, x, col_idx, row_ptr, in_features);
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(4)) grad_bias = g.sum(0);
    return {grad_x, grad_values, at::Tensor(), at::Tensor(), grad_bias, at::Tensor()};
  }
};

struct SparseMatmulFunction : torch::autograd::Function<SparseMatmulFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& values,
                            const at::Tensor& col_idx, const at::Tensor& row_ptr,
                            const std::optional<at::Tensor>& bias, int64_t in_features) {
    save_inputs(ctx, x, values, col_idx, row_ptr, bias, in_features);
    ctx->saved_data["batch"] = x.size(0);
    ctx->saved_data["columns"] = x.size(2);
    static const auto op = forward_op("sparsecomp::sparse_matmul");
    at::AutoDispatchBelowADInplaceOrView below;
    return op.call(x, values, col_idx, row_ptr, bias, in_features);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &values = saved[1], &col_idx = saved[2], &row_ptr = saved[3];
    const int64_t in_features = ctx->saved_data["in_features"].toInt();
    const int64_t batch = ctx->saved_data["batch"].toInt(), columns = ctx->saved_data["columns"].toInt();
    const at::Tensor& g = grads[0];  // [batch, rows, columns]
    // Samples as rows: [batch * columns, rows], the layout the sparse_linear backward ops take.
    const at::Tensor g_rows = g.transpose(1, 2).reshape({batch * columns, g.size(1)}).contiguous();
    at::Tensor grad_x, grad_values, grad_bias;
    if (ctx->needs_input_grad(0))
      grad_x = backward_input(g_rows, values, col_idx, row_ptr, in_features)
                   .reshape({batch, columns, in_features})
                   .transpose(1, 2);
    if (ctx->needs_input_grad(1))
      grad_values = backward_values(g_rows, x.transpose(1, 2).reshape({batch * columns, in_features}), col_idx,
                                    row_ptr, in_features);
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(4)) grad_bias = g.sum({0, 2});
    return {grad_x, grad_values, at::Tensor(), at::Tensor(), grad_bias, at::Tensor()};
  }
};

bool records_graph(const at::Tensor& x, const at::Tensor& values, const std::optional<at::Tensor>& bias) {
  return at::GradMode::is_enabled() &&
         (x.requires_grad() || values.requires_grad() || (bias.has_value() && bias->requires_grad()));
}

// No graph to record (torch.no_grad(), or nothing requires grad): the backend kernel is called directly, as
// the Python register_autograd kernel did, minus the trip through Python.
at::Tensor sparse_linear_autograd(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_idx,
                                  const at::Tensor& row_ptr, const std::optional<at::Tensor>& bias,
                                  int64_t in_features) {
  if (records_graph(x, values, bias))
    return SparseLinearFunction::apply(x, values, col_idx, row_ptr, bias, in_features);
  static const auto op = forward_op("sparsecomp::sparse_linear");
  at::AutoDispatchBelowADInplaceOrView below;
  return op.call(x, values, col_idx, row_ptr, bias, in_features);
}

at::Tensor sparse_matmul_autograd(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_idx,
                                  const at::Tensor& row_ptr, const std::optional<at::Tensor>& bias,
                                  int64_t in_features) {
  if (records_graph(x, values, bias))
    return SparseMatmulFunction::apply(x, values, col_idx, row_ptr, bias, in_features);
  static const auto op = forward_op("sparsecomp::sparse_matmul");
  at::AutoDispatchBelowADInplaceOrView below;
  return op.call(x, values, col_idx, row_ptr, bias, in_features);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecomp, Autograd, m) {
  m.impl("sparse_linear", &sparse_linear_autograd);
  m.impl("sparse_matmul", &sparse_matmul_autograd);
}

}  // namespace sparsecomp
