//! Stateless operators: filter, project and union. They work on the batch
//! as it is, columnar, with DataFusion's physical expressions; the weights
//! ride along unchanged. Watermarks pass through a filter as they are,
//! through a projection into the columns derived from the watermarked one
//! ([`crate::plan::watermark`]), and through a union as the smallest over
//! its inputs.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use datafusion::common::ScalarValue;

use super::Operator;
use crate::plan::PhysExpr;
use crate::stream::{Changes, StreamError, StreamResult, Watermark};

pub struct FilterOp {
    predicate: PhysExpr,
}

impl FilterOp {
    pub fn new(predicate: PhysExpr) -> Self {
        Self { predicate }
    }
}

impl Operator for FilterOp {
    fn process(&mut self, _input: usize, changes: Changes) -> StreamResult<Vec<Changes>> {
        let n = changes.len();
        let mask = self.predicate.evaluate(&changes.batch)?.into_array(n)?;
        if mask.data_type() != &DataType::Boolean {
            return Err(StreamError::Corrupt(format!("filter produced {}", mask.data_type())));
        }
        Ok(vec![changes.filter(mask.as_boolean())?])
    }

    fn watermark(&mut self, _input: usize, wm: &Watermark) -> StreamResult<Vec<Watermark>> {
        Ok(vec![wm.clone()])
    }
}

pub struct ProjectOp {
    exprs: Vec<PhysExpr>,
    schema: SchemaRef,
    /// Per output column: the input column whose watermark it carries.
    derive: Vec<Option<usize>>,
    input: SchemaRef,
}

impl ProjectOp {
    pub fn new(exprs: Vec<PhysExpr>, schema: SchemaRef, derive: Vec<Option<usize>>, input: SchemaRef) -> Self {
        Self { exprs, schema, derive, input }
    }
}

impl Operator for ProjectOp {
    fn process(&mut self, _input: usize, changes: Changes) -> StreamResult<Vec<Changes>> {
        let n = changes.len();
        let columns = self
            .exprs
            .iter()
            .map(|e| e.evaluate(&changes.batch).and_then(|v| v.into_array(n)))
            .collect::<Result<Vec<_>, _>>()?;
        let options = datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        Ok(vec![Changes::new(batch, changes.weights)])
    }

    fn watermark(&mut self, _input: usize, wm: &Watermark) -> StreamResult<Vec<Watermark>> {
        let mut out = Vec::new();
        for (j, d) in self.derive.iter().enumerate() {
            if *d != Some(wm.col) {
                continue;
            }
            if let Some(value) = crate::plan::watermark::derive(&self.exprs[j], &self.input, wm.col, &wm.value) {
                out.push(Watermark { col: j, value });
            }
        }
        Ok(out)
    }
}

pub struct UnionOp {
    schema: SchemaRef,
    /// The latest watermark of each input, per column.
    latest: Vec<std::collections::HashMap<usize, ScalarValue>>,
    /// What was passed on, per column.
    emitted: std::collections::HashMap<usize, ScalarValue>,
}

impl UnionOp {
    pub fn new(schema: SchemaRef, inputs: usize) -> Self {
        Self { schema, latest: vec![Default::default(); inputs], emitted: Default::default() }
    }
}

impl Operator for UnionOp {
    fn process(&mut self, _input: usize, changes: Changes) -> StreamResult<Vec<Changes>> {
        let batch = rewrap(&self.schema, &changes.batch)?;
        Ok(vec![Changes::new(batch, changes.weights)])
    }

    fn watermark(&mut self, input: usize, wm: &Watermark) -> StreamResult<Vec<Watermark>> {
        let Some(slot) = self.latest.get_mut(input) else { return Ok(Vec::new()) };
        slot.insert(wm.col, wm.value.clone());
        // The smallest over the inputs, once every input has one.
        let mut min: Option<ScalarValue> = None;
        for l in &self.latest {
            let Some(v) = l.get(&wm.col) else { return Ok(Vec::new()) };
            if min.as_ref().is_none_or(|m| v < m) {
                min = Some(v.clone());
            }
        }
        let Some(min) = min else { return Ok(Vec::new()) };
        if self.emitted.get(&wm.col).is_some_and(|e| *e >= min) {
            return Ok(Vec::new());
        }
        self.emitted.insert(wm.col, min.clone());
        Ok(vec![Watermark { col: wm.col, value: min }])
    }
}

/// The same columns under another schema (casting where a type differs).
pub fn rewrap(schema: &SchemaRef, batch: &RecordBatch) -> StreamResult<RecordBatch> {
    with_schema(schema, batch.columns().to_vec(), batch.num_rows())
}

/// A batch of `schema` from `rows` rows of `columns`, cast to the schema's
/// types where they differ.
pub fn with_schema(schema: &SchemaRef, columns: Vec<ArrayRef>, rows: usize) -> StreamResult<RecordBatch> {
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { datafusion::arrow::compute::cast(&c, f.data_type()) })
        .collect::<Result<Vec<_>, _>>()?;
    let options = datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?)
}
