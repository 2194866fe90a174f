"""Storage shared by the sparse modules: a tiled-CSR weight whose nonzeros are a trainable Parameter."""
from __future__ import annotations

import torch
from torch import nn

from ..formats.sparse import TiledCSR, num_col_tiles

_STRUCTURE = ("values", "col_idx", "row_ptr")


class SparseWeightMixin:
    """Holds ``values`` (Parameter), ``col_idx`` and ``row_ptr`` (buffers) of a [rows, cols] weight.

    The nonzero pattern is fixed at conversion; only the values train, so pruned positions stay zero while
    fine-tuning. ``load_state_dict`` accepts any nonzero count (the arrays are resized, then validated).
    """

    def _init_sparse_weight(self, rows: int, cols: int, dtype=None, device=None) -> None:
        self._weight_shape = (rows, cols)
        self.values = nn.Parameter(torch.empty(0, dtype=dtype or torch.get_default_dtype(), device=device))
        self.register_buffer("col_idx", torch.empty(0, dtype=torch.int16, device=device))
        self.register_buffer("row_ptr", torch.zeros(rows * num_col_tiles(cols) + 1, dtype=torch.int64,
                                                    device=device))

    def _set_sparse_weight(self, csr: TiledCSR) -> None:
        if tuple(csr.shape) != tuple(self._weight_shape):
            raise ValueError(f"weight shape {tuple(csr.shape)} does not match the module's {self._weight_shape}")
        self.values = nn.Parameter(csr.values.detach().clone(), requires_grad=self.values.requires_grad)
        self.col_idx = csr.col_idx.clone()
        self.row_ptr = csr.row_ptr.clone()

    def _operands(self) -> tuple:
        """(values, col_idx, row_ptr, bias) for the sparse op, read from the module's dicts.

        Why: ``self.values`` goes through nn.Module.__getattr__ (~0.5 us each, four per call: as much as the op
        at batch 1). Where the tensors are not in the dicts (torch.nn.utils.prune / parametrize moved them),
        the attribute lookup finds them.
        """
        params, buffers = self._parameters, self._buffers
        try:
            return params["values"], buffers["col_idx"], buffers["row_ptr"], params["bias"]
        except KeyError:
            return self.values, self.col_idx, self.row_ptr, self.bias

    def sparse_weight(self) -> TiledCSR:
        return TiledCSR(self.values, self.col_idx, self.row_ptr, self._weight_shape)

    def weight_matrix(self) -> torch.Tensor:
        """The dense [rows, cols] weight (pruned positions are zero)."""
        return TiledCSR(self.values.detach(), self.col_idx, self.row_ptr, self._weight_shape).to_dense()

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def sparsity(self) -> float:
        total = self._weight_shape[0] * self._weight_shape[1]
        return 1.0 - self.nnz / total if total else 0.0

    def sparse_nbytes(self) -> int:
        """Bytes of the weight as stored (values + indices + row pointers), for memory reports."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.col_idx, self.row_ptr))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Kernels trust col_idx/row_ptr for addressing: check the incoming structure before anything is copied,
        # so a rejected checkpoint leaves the module as it was.
        incoming = {name: state_dict.get(prefix + name, getattr(self, name)) for name in _STRUCTURE}
        if not all(isinstance(t, torch.Tensor) for t in incoming.values()):
            error_msgs.append(f"{prefix or 'module'}: values, col_idx and row_ptr must be tensors")
            return
        try:
            TiledCSR(incoming["values"], incoming["col_idx"], incoming["row_ptr"], self._weight_shape).validate()
        except ValueError as err:
            error_msgs.append(f"{prefix or 'module'}: invalid sparse weight in state_dict: {err}")
            return
        # The nonzero count of a checkpoint is unknown to a freshly built module: resize before copying.
        for name in _STRUCTURE:
            current = getattr(self, name)
            if incoming[name].shape != current.shape:
                resized = torch.empty(incoming[name].shape, dtype=current.dtype, device=current.device)
                if name == "values":
                    self.values = nn.Parameter(resized, requires_grad=self.values.requires_grad)
                else:
                    setattr(self, name, resized)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
