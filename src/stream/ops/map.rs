//! Stateless operators: filter, project and union. They work on the batch
//! as it is, columnar, with DataFusion's physical expressions; the weights
//! ride along unchanged.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use super::Operator;
use crate::plan::PhysExpr;
use crate::stream::{Changes, StreamError, StreamResult};

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
}

pub struct ProjectOp {
    exprs: Vec<PhysExpr>,
    schema: SchemaRef,
}

impl ProjectOp {
    pub fn new(exprs: Vec<PhysExpr>, schema: SchemaRef) -> Self {
        Self { exprs, schema }
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
}

pub struct UnionOp {
    schema: SchemaRef,
}

impl UnionOp {
    pub fn new(schema: SchemaRef) -> Self {
        Self { schema }
    }
}

impl Operator for UnionOp {
    fn process(&mut self, _input: usize, changes: Changes) -> StreamResult<Vec<Changes>> {
        let batch = rewrap(&self.schema, &changes.batch)?;
        Ok(vec![Changes::new(batch, changes.weights)])
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
