//! Layers applied one after another; the i-th is named `prefix.i` (as `nn.Sequential`).

use bagssl_autograd::Var;

use super::{Forward, Layer, Visitor, VisitorMut};
use crate::Result;

#[derive(Debug)]
pub struct Sequential<L> {
    pub layers: Vec<L>,
}

impl<L: Layer> Layer for Sequential<L> {
    fn forward<'a>(&'a self, f: &mut Forward<'_, 'a>, x: Var) -> Result<Var> {
        self.layers.iter().try_fold(x, |x, l| l.forward(f, x))
    }
    fn visit<'s>(&'s self, v: &mut Visitor<'s>) {
        self.layers.iter().for_each(|l| l.visit(v));
    }
    fn visit_mut<'s>(&'s mut self, v: &mut VisitorMut<'s>) {
        self.layers.iter_mut().for_each(|l| l.visit_mut(v));
    }
}
