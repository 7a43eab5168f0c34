// pgjdbc against a running eddy: prepared statements with parameters,
// typed results, SQLSTATEs, and DatabaseMetaData.getTables / getColumns
// (what DBeaver, Metabase and other JDBC tools call).
// Usage: java -cp postgresql.jar JdbcCheck.java PORT
import java.math.BigDecimal;
import java.sql.*;
import java.util.*;

public class JdbcCheck {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/eddy";
        try (Connection c = DriverManager.getConnection(url, "eddy", "")) {
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE jdbc_t (id BIGINT PRIMARY KEY, name VARCHAR(20) NOT NULL, price NUMERIC(8,2), seen TIMESTAMP)");
            }
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO jdbc_t VALUES (?, ?, ?, ?)")) {
                for (int i = 1; i <= 10; i++) {
                    ps.setLong(1, i);
                    ps.setString(2, "n" + i);
                    ps.setBigDecimal(3, new BigDecimal(i + ".50"));
                    ps.setTimestamp(4, Timestamp.valueOf("2024-01-01 00:00:00"));
                    check(ps.executeUpdate() == 1, "insert count");
                }
            }
            try (PreparedStatement ps = c.prepareStatement("SELECT name, price FROM jdbc_t WHERE id = ?")) {
                for (int round = 0; round < 6; round++) { // pgjdbc switches to server-prepared after 5 uses
                    ps.setLong(1, 7);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next(), "row");
                        check(rs.getString(1).equals("n7"), "name");
                        check(rs.getBigDecimal(2).compareTo(new BigDecimal("7.50")) == 0, "price");
                        check(!rs.next(), "one row");
                    }
                }
            }
            try (Statement s = c.createStatement()) {
                s.executeQuery("SELECT * FROM nope");
                throw new AssertionError("missing table accepted");
            } catch (SQLException e) {
                check("42P01".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
            }
            DatabaseMetaData md = c.getMetaData();
            Set<String> tables = new HashSet<>();
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_NAME"));
            }
            check(tables.contains("jdbc_t"), "getTables: " + tables);
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = md.getColumns(null, "public", "jdbc_t", "%")) {
                while (rs.next()) columns.add(rs.getString("COLUMN_NAME"));
            }
            check(columns.equals(List.of("id", "name", "price", "seen")), "getColumns: " + columns);
        }
        System.out.println("jdbc checks passed");
    }
}
